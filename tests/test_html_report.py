"""The HTML report: self-contained, charts drawn; rendered in a real headless Chromium when one is installed."""

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

from doctor.report.html import bar_chart, line_chart, render_html

from conftest import FIXTURES

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)


def test_line_chart_draws_series_and_breaks_at_nan():
    svg = line_chart("loss", {"loss": [2.3, 2.1, float("nan"), 1.9, 1.8]})
    assert svg.count('class="series"') == 2  # the NaN splits the line in two segments
    assert "No data" not in svg


def test_charts_degrade_to_a_note_without_data():
    assert "No data recorded" in line_chart("loss", {"loss": []})
    assert "No data recorded" in bar_chart("flow", [], [])


def test_render_html_is_self_contained_for_a_crashed_run():
    page = render_html({"script": {"path": "t.py", "status": "crashed", "error": {"type": "RuntimeError", "message": "boom"}}})
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert "crashed" in page and "boom" in page


def _png_pixels(path):
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into rows of bytes, without third-party packages."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for r in range(height):
        f = raw[r * (stride + 1)]
        line = bytearray(raw[r * (stride + 1) + 1 : (r + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return rows, bpp


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (.ci/run installs it from the OS packages)")
def test_real_report_renders_in_headless_chromium(tmp_path):
    pytest.importorskip("torch")
    html_path = tmp_path / "report.html"
    p = subprocess.run(
        [sys.executable, "-m", "doctor", "probe", "bad_init.py", "--with-static", "--format", "html", "--steps", "12",
         "--device", "cpu", "-q", "-o", str(html_path)],
        cwd=os.path.join(FIXTURES, "report"), capture_output=True, text=True, timeout=300,
    )
    assert html_path.exists(), p.stderr
    common = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,2000"]
    dom = subprocess.run(common + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    # The browser parsed the page and the charts are in its DOM with drawn marks.
    for chart in ("chart-loss", "chart-grad-norm", "chart-gradient-flow", "chart-update-ratio", "chart-memory"):
        assert f'id="{chart}"' in dom, chart
    loss_chart = dom.split('id="chart-loss"')[1].split("</figure>")[0]
    assert "<polyline" in loss_chart
    flow_chart = dom.split('id="chart-gradient-flow"')[1].split("</figure>")[0]
    assert 'class="bar"' in flow_chart
    assert "confirmed at runtime" in dom and "bad-init" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(common + [f"--screenshot={shot}", html_path.as_uri()], capture_output=True, timeout=120)
    rows, bpp = _png_pixels(shot)
    # Not blank: many distinct colours, and the chart area (lower half) has ink, not only background.
    colours = {row[i : i + 3] for row in rows[::7] for i in range(0, len(row), bpp * 7)}
    assert len(colours) > 20
    lower = rows[len(rows) // 2 :]
    ink = sum(1 for row in lower[::5] for i in range(0, len(row), bpp * 5) if row[i] < 120)
    assert ink > 200


def test_axes_have_round_ticks_and_sensible_bounds():
    svg = line_chart("loss", {"loss": [2.33, 1.7, 1.1, 0.4, 0.0507]})
    ticks = re.findall(r'class="tick">([^<]+)</text>', svg)
    y_ticks = [t for t in ticks if "." in t or t == "0"]
    assert all(not t.startswith("-") for t in ticks)  # a loss axis does not go negative
    assert all(len(t.rstrip("0").split(".")[-1]) <= 2 for t in y_ticks if "." in t)  # round numbers
    flat = line_chart("grad norm", {"g": [1.01, 1.02, 1.0, 1.03]}, log_y=True)
    labels = re.findall(r'text-anchor="end" class="tick">([^<]+)</text>', flat)
    assert len(set(labels)) == len(labels) > 2  # not "1 1 1 1 1"
    wide = line_chart("grad norm", {"g": [1e-3, 0.1, 10.0]}, log_y=True)
    assert {"0.001", "0.1", "10"} <= set(re.findall(r'text-anchor="end" class="tick">([^<]+)</text>', wide))


def test_report_files_get_the_usual_mode(tmp_path):
    from doctor.core.fsutil import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "report.html"), "<html></html>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644
