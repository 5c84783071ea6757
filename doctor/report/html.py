"""A self-contained HTML report: inline SVG charts and CSS, no scripts, nothing fetched at view time.

Input is the JSON payload of ``doctor probe`` (optionally merged with static findings): ``script``,
``device``, ``checks``, ``series`` and ``findings``/``links``. Every chart degrades to a short note when
the run recorded no data for it, so a crashed run still renders.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable, Optional, Sequence
from doctor.core.numbers import finite

_STATUS_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#6e7781"}
_SEVERITY_COLOURS = {"error": "#cf222e", "warning": "#9a6700", "info": "#0969da"}
_VERDICT_COLOURS = {"confirmed": "#cf222e", "contradicted": "#1a7f37", "not-observed": "#6e7781"}
_PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#116329", "#953800", "#6639ba"]

W, H = 640, 260
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 28, 36


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)



def _fmt(v: float, span: Optional[float] = None) -> str:
    """A value label with enough digits to tell neighbouring ticks apart (``span``: the axis range)."""
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.1e}"
    digits = 3
    if span and span > 0:
        digits = max(3, min(8, int(math.ceil(math.log10(abs(v) / span))) + 2))
    return f"{v:.{digits}g}"


def nice_step(raw: float) -> float:
    """The round step (1, 2, 2.5 or 5 times a power of ten) at or above ``raw``."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * power * (1 + 1e-9):
            return m * power
    return 10 * power


def nice_axis(lo: float, hi: float, ticks: int = 5) -> tuple[float, float, list[float]]:
    """Axis bounds on round numbers around [lo, hi] and the ticks between them. Bounds never cross zero
    unless the data does: a loss axis starts at or above 0."""
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        half = abs(hi) * 0.1 or 1.0
        lo, hi = (max(0.0, lo - half) if lo >= 0 else lo - half), hi + half
    step = nice_step((hi - lo) / max(1, ticks - 1))
    a, b = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    if b <= a:
        b = a + step
    count = int(round((b - a) / step))
    return a, b, [a + i * step for i in range(count + 1)]


def _tick_label(v: float, step: float) -> str:
    if abs(v) < step * 1e-6:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.2g}" if abs(v) < 1e-3 else f"{v:.3g}"
    decimals = max(0, -int(math.floor(math.log10(step) + 1e-9)))
    if step * 10 ** decimals % 1 > 1e-6:  # a 2.5 step needs one more digit
        decimals += 1
    return f"{v:.{decimals}f}"


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """Bounds in log10 units on whole decades, ticks at 1x (and 2x, 5x when few decades) each decade."""
    a, b = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
    if b <= a:
        b = a + 1
    ticks = []
    for k in range(int(a), int(b) + 1):
        for m in ((1, 2, 5) if b - a <= 2 else (1,)):
            t = k + math.log10(m)
            if a - 1e-9 <= t <= b + 1e-9:
                ticks.append(t)
    return a, b, ticks


def _log_label(t: float) -> str:
    v = 10 ** t
    if 1e-3 <= v < 1e4:
        return f"{v:.3g}"
    m = round(v / 10 ** math.floor(t + 1e-9))
    return f"{m}e{int(math.floor(t + 1e-9))}" if m != 1 else f"1e{int(round(t))}"


def line_chart(
    title: str,
    series: dict[str, Sequence[Optional[float]]],
    *,
    x: Optional[Sequence[float]] = None,
    log_y: bool = False,
    log_x: bool = False,
    hlines: Sequence[tuple[str, float]] = (),
    x_label: str = "optimizer step",
    chart_id: str = "",
    connect_missing: bool = False,
) -> str:
    """An SVG line chart on round-numbered axes. Non-finite points break the line (a NaN loss shows as a gap);
    ``None`` points break it too unless ``connect_missing`` (series recorded only on sampled steps). A log
    axis whose data spans less than a decade is drawn linear (decade ticks would all read the same)."""
    all_vals = finite(v for s in series.values() for v in s) + [v for _, v in hlines]
    if log_y:
        all_vals = [v for v in all_vals if v > 0]
    n = max((len(s) for s in series.values()), default=0)
    if not all_vals or n == 0:
        return f'<figure class="chart empty" id="{_esc(chart_id)}"><figcaption>{_esc(title)}</figcaption><p class="note">No data recorded for this chart.</p></figure>'
    xs = list(x) if x is not None else list(range(n))
    if log_y and math.log10(max(all_vals)) - math.log10(min(all_vals)) < 1:
        log_y = False
    if log_x:
        xs_pos = [v for v in xs if isinstance(v, (int, float)) and v > 0]
        log_x = bool(xs_pos) and math.log10(max(xs_pos)) - math.log10(min(xs_pos)) >= 1
    tx = (lambda v: math.log10(v)) if log_x else (lambda v: v)  # noqa: E731
    ty = (lambda v: math.log10(v)) if log_y else (lambda v: v)  # noqa: E731
    if log_y:
        lo, hi, yticks = _log_ticks(min(ty(v) for v in all_vals), max(ty(v) for v in all_vals))
        ylabels = [_log_label(t) for t in yticks]
    else:
        lo, hi, yticks = nice_axis(min(all_vals), max(all_vals))
        step = nice_step((yticks[1] - yticks[0]) * (1 - 1e-9)) if len(yticks) > 1 else 1.0
        ylabels = [_tick_label(t, step) for t in yticks]
    xvals = [tx(v) for v in xs if isinstance(v, (int, float)) and (v > 0 or not log_x)]
    if log_x:
        x_lo, x_hi, xticks = _log_ticks(min(xvals), max(xvals))
        xlabels = [_log_label(t) for t in xticks if abs(t - round(t)) < 1e-9]
        xticks = [t for t in xticks if abs(t - round(t)) < 1e-9]
    else:
        x_lo, x_hi = min(xvals), max(xvals)
        if x_hi <= x_lo:
            x_hi = x_lo + 1
        raw = (x_hi - x_lo) / 5
        xstep = next(m * 10 ** k for k in range(0, 12) for m in (1, 2, 5) if m * 10 ** k >= raw)  # whole steps
        xticks = [t for t in (math.ceil(x_lo / xstep) * xstep + i * xstep for i in range(12)) if t <= x_hi + 1e-9]
        xlabels = [_tick_label(t, xstep) for t in xticks]

    def px(xv: float) -> float:
        return PAD_L + (tx(xv) - x_lo) / (x_hi - x_lo) * (W - PAD_L - PAD_R)

    def pxt(t: float) -> float:
        return PAD_L + (t - x_lo) / (x_hi - x_lo) * (W - PAD_L - PAD_R)

    def py(yv: float) -> float:
        return PAD_T + (hi - ty(yv)) / (hi - lo) * (H - PAD_T - PAD_B)

    parts = [f'<svg class="chart-svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{_esc(title)}">']
    parts.append(f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" fill="#fff" stroke="#d0d7de"/>')
    for t, label in zip(yticks, ylabels):  # y grid and labels
        y = PAD_T + (hi - t) / (hi - lo) * (H - PAD_T - PAD_B)
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{label}</text>')
    for t, label in zip(xticks, xlabels):
        parts.append(f'<text x="{pxt(t):.1f}" y="{H - PAD_B + 16}" text-anchor="middle" class="tick">{label}</text>')
    parts.append(f'<text x="{(PAD_L + W - PAD_R) / 2:.0f}" y="{H - 4}" text-anchor="middle" class="axis">{_esc(x_label)}</text>')
    for label, value in hlines:
        if log_y and value <= 0:
            continue
        y = py(value)
        parts.append(f'<line class="limit" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#cf222e" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{W - PAD_R - 4}" y="{y - 4:.1f}" text-anchor="end" class="tick limit-label">{_esc(label)} {_fmt(value)}</text>')
    for k, (name, values) in enumerate(series.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        segments, current = [], []
        for xv, v in zip(xs, values):
            ok_x = isinstance(xv, (int, float)) and (xv > 0 or not log_x)
            if ok_x and isinstance(v, (int, float)) and math.isfinite(v) and (not log_y or v > 0):
                current.append(f"{px(xv):.1f},{py(v):.1f}")
            elif v is None and connect_missing:
                continue
            elif current:
                segments.append(current)
                current = []
        if current:
            segments.append(current)
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                parts.append(f'<circle class="series" cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>')
            else:
                parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(seg)}"/>')
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{_PALETTE[k % len(_PALETTE)]}"></i>{_esc(name)}</span>' for k, name in enumerate(series)
    )
    return f'<figure class="chart" id="{_esc(chart_id)}"><figcaption>{_esc(title)}</figcaption>{"".join(parts)}<div class="legend">{legend}</div></figure>'


def bar_chart(title: str, labels: Sequence[str], values: Sequence[Optional[float]], *, log_x: bool = True, chart_id: str = "", flagged: Iterable[str] = ()) -> str:
    """Horizontal bars, one per label (the classic per-layer gradient-flow chart)."""
    flagged = set(flagged)
    pairs = [(lab, v) for lab, v in zip(labels, values)]
    vals = [v for _, v in pairs if isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not log_x)]
    if not pairs:
        return f'<figure class="chart empty" id="{_esc(chart_id)}"><figcaption>{_esc(title)}</figcaption><p class="note">No data recorded for this chart.</p></figure>'
    t = (lambda v: math.log10(v)) if log_x else (lambda v: v)  # noqa: E731
    vals = vals or [1.0]
    lo, hi = min(t(v) for v in vals), max(t(v) for v in vals)
    lo = lo - 1 if log_x else min(0.0, lo)
    if hi - lo < 1e-12:
        hi = lo + 1
    row = 18
    label_w = 230
    height = PAD_T + row * len(pairs) + 28
    parts = [f'<svg class="chart-svg" viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img" aria-label="{_esc(title)}">']
    for i, (lab, v) in enumerate(pairs):
        y = PAD_T + i * row
        short = lab if len(lab) <= 34 else "…" + lab[-33:]
        colour = "#cf222e" if lab in flagged else "#0969da"
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" class="tick">{_esc(short)}</text>')
        if isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not log_x):
            width = max(1.0, (t(v) - lo) / (hi - lo) * (W - label_w - PAD_R - 60))
            parts.append(f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row - 6}" fill="{colour}"/>')
            parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 13}" class="tick">{_fmt(v)}</text>')
        elif v == 0:
            parts.append(f'<text x="{label_w + 4}" y="{y + 13}" class="tick missing">0 (all-zero gradient)</text>')
        else:
            parts.append(f'<text x="{label_w + 4}" y="{y + 13}" class="tick missing">no gradient</text>')
    parts.append(f'<text x="{(label_w + W) / 2:.0f}" y="{height - 6}" text-anchor="middle" class="axis">{"log10 scale" if log_x else ""}</text>')
    parts.append("</svg>")
    return f'<figure class="chart" id="{_esc(chart_id)}"><figcaption>{_esc(title)}</figcaption>{"".join(parts)}</figure>'


_CSS = """
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1360px;color:#1f2328;background:#f6f8fa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a} .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(660px,1fr));gap:16px}
figure.chart{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:0;padding:10px}
figcaption{font-weight:600;margin-bottom:6px} .tick{font-size:11px;fill:#57606a} .axis{font-size:11px;fill:#57606a}
.legend{font-size:12px;color:#57606a} .key{margin-right:12px} .key i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de} th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa} .badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px;overflow:auto;margin:6px 0} pre .hit{background:#ffebe9;display:block}
.finding{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px;margin-bottom:10px} .note{color:#57606a}
.evidence{color:#57606a;font-size:13px} code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
"""


def _badge(text: str, colour: str) -> str:
    return f'<span class="badge" style="background:{colour}">{_esc(text)}</span>'


def _checks_table(checks: list[dict[str, Any]], partial: str = "") -> str:
    """The check table. After a crash or timeout (``partial`` says what happened) a pass judged only the steps
    before it: shown grey and marked, never as a green all-clear."""
    if not checks:
        return '<p class="note">No runtime checks in this report.</p>'
    rows = []
    if partial:
        rows.append(f'<tr class="partial"><td colspan="3"><b>{_esc(partial)}</b> The checks below judged only the '
                    'steps before it; a pass here is not an all-clear.</td></tr>')
    for c in checks:
        status = str(c.get("status", "skip"))
        if partial and status == "pass":
            rows.append(
                f'<tr class="check check-pass-partial"><td>{_badge("pass*", "#6e7781")}</td>'
                f'<td><code>{_esc(c.get("name"))}</code></td><td>{_esc(c.get("summary", ""))}'
                '<div class="evidence">judged on the steps before the run ended early</div></td></tr>')
            continue
        advice = c.get("advice") or c.get("what_to_do") or ""
        rows.append(
            f'<tr class="check check-{_esc(status)}"><td>{_badge(status, _STATUS_COLOURS.get(status, "#6e7781"))}</td>'
            f'<td><code>{_esc(c.get("name"))}</code></td><td>{_esc(c.get("summary", ""))}'
            + (f'<div class="evidence">{_esc(advice)}</div>' if advice else "")
            + "</td></tr>"
        )
    return "<table id=\"checks\"><tr><th>status</th><th>check</th><th>summary</th></tr>" + "".join(rows) + "</table>"


def _ranks_section(job: dict[str, Any]) -> str:
    """Distributed mode: one row per rank (how it ended, steps, where it was) and charts of loss and step time per rank."""
    ranks = job.get("ranks") or []
    if not ranks:
        return ""
    rows = []
    for r in ranks:
        status = str(r.get("status", ""))
        colour = {"stopped": "#1a7f37", "completed": "#1a7f37"}.get(status, "#cf222e")
        err = r.get("error") if isinstance(r.get("error"), dict) else None
        why = ""
        if err and status not in ("stopped", "completed"):
            where = f" ({err.get('path')}:{err.get('line')})" if err.get("path") and err.get("line") else ""
            why = f"{err.get('type')}: {err.get('message')}{where}"
        disagree = [f"{c.get('name')} {c.get('status')}" for c in r.get("checks") or [] if c.get("status") in ("warn", "fail")]
        rows.append(f"<tr><td>{_esc(r.get('rank'))}</td><td>{_badge(status, colour)}</td><td>{_esc(r.get('steps_observed'))}</td>"
                    f"<td>{_esc(why)}</td><td>{_esc(', '.join(disagree))}</td></tr>")
    head = (f"torch.distributed.run, {_esc(job.get('nproc_per_node'))} per node"
            + (f", backend {_esc(job.get('backend'))}" if job.get("backend") else "")
            + (f", world size {_esc(job.get('world_size'))}" if job.get("world_size") else ""))
    table = ('<table id="ranks"><tr><th>rank</th><th>status</th><th>steps</th><th>how it ended</th><th>its checks that warn or fail</th></tr>'
             + "".join(rows) + "</table>")
    loss = {f"rank {r.get('rank')}": (r.get("series") or {}).get("loss") or [] for r in ranks}
    times = {f"rank {r.get('rank')}": [v * 1000 if isinstance(v, (int, float)) else None
                                      for v in (r.get("series") or {}).get("step_seconds") or []] for r in ranks}
    charts = [line_chart("Loss per rank", loss, chart_id="chart-rank-loss"),
              line_chart("Step time per rank (ms)", times, chart_id="chart-rank-step-time")]
    return f'<h2 id="ranks-heading">Ranks</h2><p class="note">{head}</p>{table}<div class="grid">{"".join(charts)}</div>'


def _findings_section(findings: list[dict[str, Any]], links: list[dict[str, Any]]) -> str:
    if not findings:
        return '<p class="note">No static findings.</p>'
    by_key = {(l.get("path"), l.get("line"), l.get("rule")): l for l in links}
    out = []
    for f in findings:
        link = by_key.get((f.get("path"), f.get("line"), f.get("rule")))
        sev = str(f.get("severity", "error"))
        head = (
            f'{_badge(sev, _SEVERITY_COLOURS.get(sev, "#6e7781"))} <code>{_esc(f.get("path"))}:{_esc(f.get("line"))}</code> '
            f'<b>{_esc(f.get("code"))}</b> <code>{_esc(f.get("rule"))}</code>'
        )
        if link is not None:
            verdict = str(link.get("verdict", "not-observed"))
            head += " " + _badge(verdict.replace("-", " ") + " at runtime", _VERDICT_COLOURS.get(verdict, "#6e7781"))
        body = f"<div>{_esc(f.get('message', ''))}</div>"
        source = f.get("source") or []
        if source:
            lines = []
            for item in source:
                text = f'{item["line"]:>5}  {item["text"]}'
                lines.append(f'<span class="hit">{_esc(text)}</span>' if item.get("hit") else _esc(text) + "\n")
            body += "<pre>" + "".join(lines) + "</pre>"
        if link is not None and link.get("summary"):
            body += f'<div class="evidence">{_esc(link["summary"])}</div>'
        out.append(f'<div class="finding">{head}{body}</div>')
    return "".join(out)


def _layer_norms(series: dict[str, Any]) -> dict[str, float]:
    """Per-layer gradient norm (median over sampled steps), parameters of one module combined."""
    per_layer: dict[str, float] = {}
    for name, values in (series.get("param_grad_norm") or {}).items():
        vals = sorted(finite(values))
        if not vals:
            continue
        layer = name.rsplit(".", 1)[0] if name.rsplit(".", 1)[-1] in ("weight", "bias") and "." in name else name
        med = vals[len(vals) // 2]
        per_layer[layer] = math.sqrt(per_layer.get(layer, 0.0) ** 2 + med**2)
    return per_layer


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML string."""
    script = report.get("script") or {}
    device = report.get("device") or {}
    series = report.get("series") or {}
    checks = report.get("checks") or []
    findings = [f for f in report.get("findings") or [] if f.get("origin", "static") == "static"]
    runtime_findings = [f for f in report.get("findings") or [] if f.get("origin") == "runtime"]
    links = report.get("links") or []
    steps = series.get("step") or list(range(len(series.get("loss") or [])))

    charts = []
    charts.append(line_chart("Loss over probed steps", {"loss": series.get("loss") or []}, x=steps or None, chart_id="chart-loss"))
    charts.append(line_chart("Global gradient norm (sampled steps)", {"grad norm": series.get("grad_norm") or []}, x=steps or None, log_y=True, chart_id="chart-grad-norm", connect_missing=True))
    layer_norms = _layer_norms(series)
    flow = next((c for c in checks if c.get("name") == "gradient-flow"), {})
    flow_ev = flow.get("evidence") or {}
    missing = [n.rsplit(".", 1)[0] if n.endswith((".weight", ".bias")) else n for n in (flow_ev.get("no_grad") or []) + (flow_ev.get("all_zero") or [])]
    labels = list(layer_norms) + sorted(set(missing) - set(layer_norms))
    charts.append(bar_chart("Gradient norm per layer (gradient flow)", labels, [layer_norms.get(k) for k in labels], chart_id="chart-gradient-flow", flagged=missing))
    ratios = {f"group {g}": vals for g, vals in enumerate(series.get("update_ratio") or [])}
    charts.append(line_chart("Update / weight ratio ‖Δw‖/‖w‖ per parameter group", ratios, x=steps or None, log_y=True, hlines=[("healthy ≈", 1e-3)], chart_id="chart-update-ratio", connect_missing=True))
    memory = series.get("memory_bytes") or {}
    limit = device.get("total_bytes")
    if memory and any(finite(v) for v in memory.values()):
        gib = {k: [v / 2**30 if isinstance(v, (int, float)) else None for v in vals] for k, vals in memory.items()}
        charts.append(line_chart("GPU memory (GiB)", gib, x=steps or None, hlines=[("device limit", limit / 2**30)] if limit else [], chart_id="chart-memory"))
    else:
        reason = "the run was on CPU" if device.get("type", "cpu") != "cuda" else "no memory statistics were recorded"
        charts.append(f'<figure class="chart empty" id="chart-memory"><figcaption>GPU memory</figcaption><p class="note">No GPU memory chart: {_esc(reason)}.</p></figure>')
    recipes = report.get("recipes") or {}
    if "overfit-batch" in recipes:
        rs = recipes["overfit-batch"].get("series") or {}
        charts.append(line_chart("Recipe: overfit one batch (loss per step)", {"loss": rs.get("loss") or []},
                                 x=rs.get("step") or None, chart_id="chart-overfit-batch"))
    if "lr-range" in recipes:
        rs = recipes["lr-range"].get("series") or {}
        charts.append(line_chart("Recipe: LR range test (loss against the swept LR; the script's schedule overridden)",
                                 {"loss": rs.get("loss") or []}, x=rs.get("lr") or None, log_x=True,
                                 x_label="learning rate (log scale)", chart_id="chart-lr-range"))
    findings = findings + runtime_findings

    status = str(script.get("status", ""))
    partial = ""
    if status in ("crashed", "timeout"):
        partial = f"The run {status} after {script.get('steps_observed', 0)} optimizer step(s)."
    err = script.get("error") if isinstance(script.get("error"), dict) else None
    trace = ""
    if err and (err.get("traceback") or err.get("message")):
        where = f" at {err.get('path')}:{err.get('line')}" if err.get("path") and err.get("line") else ""
        body = "\n".join(err.get("traceback") or []) or f"{err.get('type')}: {err.get('message')}"
        trace = (f'<h2 id="traceback">Why the run ended: {_esc(err.get("type"))}{_esc(where)}</h2>'
                 f'<pre class="traceback">{_esc(body)}</pre>')
    elif status in ("crashed", "timeout") and script.get("output_tail"):
        trace = ('<h2 id="traceback">Last output of the script</h2><pre class="traceback">'
                 + _esc("\n".join(script["output_tail"][-20:])) + "</pre>")
    title = f"doctor report — {script.get('path', report.get('path', ''))}"
    meta = []
    if script:
        meta.append(f"status <b>{_esc(status)}</b>, {_esc(script.get('steps_observed', 0))} optimizer steps, {_esc(round(float(script.get('wall_seconds') or 0), 1))} s")
        if script.get("error"):
            err = script["error"]
            meta.append(f"error: {_esc(err.get('type') if isinstance(err, dict) else err)} {_esc(err.get('message', '') if isinstance(err, dict) else '')}")
    if device:
        meta.append("device: " + _esc(device.get("name") or device.get("type", "")))
    n_err = sum(1 for f in findings if f.get("severity") == "error")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><div class=\"meta\">{' · '.join(meta)}</div>"
        f"<h2>Static findings ({len(findings)}, {n_err} errors)</h2>{_findings_section(findings, links)}"
        f"{trace}<h2>Runtime checks</h2>{_checks_table(checks, partial)}"
        f"{_ranks_section(report.get('distributed') or {})}"
        f"<h2>The run</h2><div class=\"grid\">{''.join(charts)}</div>"
        "<p class=\"note\">Generated by doctor. Self-contained: no scripts, no network.</p></body></html>"
    )
