"""`doctor probe --nproc-per-node 2` end to end on CPU: torchrun, the gloo backend, two ranks, the public command.

A healthy DDP script passes; one that forgets the DDP wrap fails rank-sync; one without a distributed sampler
and the same seed on every rank fails data-sharding; a sampler whose epoch is never set warns; a rank that
crashes, is killed (as by the OOM killer) or hangs gives a report naming it, and no process of the job is left
behind. Every scenario is one torchrun launch; they run in parallel in a module-scoped fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch")
if not sys.platform.startswith("linux"):
    pytest.skip("the process checks read /proc", allow_module_level=True)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probe"
STEPS = 8
TIMEOUT = 120
#: The hang scenario's --timeout: enough for three processes to import torch on a loaded 2-core box and take
#: three steps; the run then idles until it, so it overlaps the other scenarios.
HANG_TIMEOUT = 30
SCENARIOS = {  # name: (format, timeout, extra options)
    "ddp_hang": ("json", HANG_TIMEOUT, ()),  # first: it mostly waits
    "ddp_healthy": ("json", TIMEOUT, ()),
    "ddp_no_wrap": ("json", TIMEOUT, ()),
    "ddp_same_batches": ("json", TIMEOUT, ()),
    "ddp_crash": ("text", TIMEOUT, ()),
    "ddp_killed": ("json", TIMEOUT, ()),
    "ddp_sampler_epoch": ("json", TIMEOUT, ("--with-static",)),
}


def _alive_with(marker: str) -> list[str]:
    """Processes (not zombies) whose command line mentions ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{pid}/status") as fh:
                state = next((ln.split()[1] for ln in fh if ln.startswith("State:")), "?")
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(f"{pid} {state} {cmd[:200]}")
    return found


def _leftovers(marker: str) -> list[str]:
    deadline = time.monotonic() + 3.0  # SIGKILLed processes take a moment to go
    while True:
        left = _alive_with(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("ddp")

    def go(name: str) -> tuple[str, dict]:
        fmt, timeout, extra = SCENARIOS[name]
        # a copy with a name of its own: its path marks every process of this job in /proc
        script = tmp / f"{name}_{os.getpid()}.py"
        shutil.copy(FIXTURES / f"{name}.py", script)
        out = tmp / f"{name}.{fmt}"
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "doctor", "probe", "--nproc-per-node", "2", str(script), "--steps", str(STEPS),
             "--device", "cpu", "--timeout", str(timeout), "--format", fmt, "-o", str(out), "-q", "--no-color", *extra],
            capture_output=True, text=True, timeout=timeout + 60, cwd=tmp)
        took = time.monotonic() - t0
        report = out.read_text() if out.exists() else ""
        return name, {"proc": proc, "seconds": took, "report": report,
                      "data": json.loads(report) if fmt == "json" and report else None,
                      "leftovers": _leftovers(str(script))}

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(go, SCENARIOS))


def _checks(data: dict) -> dict[str, dict]:
    return {c["name"]: c for c in data["checks"]}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_process_is_left_behind(runs, name):
    r = runs[name]
    assert r["proc"].returncode in (0, 1), r["proc"].stderr[-2000:]
    assert "Traceback" not in r["proc"].stderr
    assert r["leftovers"] == []


def test_healthy_ddp_passes(runs):
    r = runs["ddp_healthy"]
    data = r["data"]
    assert r["proc"].returncode == 0, r["report"]
    assert data["script"]["status"] == "stopped" and data["script"]["steps_observed"] == STEPS
    checks = _checks(data)
    assert all(c["status"] in ("pass", "skip") for c in checks.values()), {n: c["summary"] for n, c in checks.items()}
    assert checks["rank-sync"]["status"] == "pass" and checks["data-sharding"]["status"] == "pass"
    assert checks["rank-skew"]["status"] == "pass"
    job = data["distributed"]
    assert job["world_size"] == 2 and job["backend"] == "gloo" and job["ddp"] is True
    assert [(x["rank"], x["status"], x["steps_observed"]) for x in job["ranks"]] == [(0, "stopped", STEPS), (1, "stopped", STEPS)]


def test_forgotten_ddp_wrap_fails_rank_sync(runs):
    r = runs["ddp_no_wrap"]
    checks = _checks(r["data"])
    rs = checks["rank-sync"]
    assert r["proc"].returncode == 1 and rs["status"] == "fail"
    assert "parameters differ between ranks 0, 1" in rs["summary"] and "0.weight (off by" in rs["summary"]
    assert "no DistributedDataParallel wrapper was seen" in rs["summary"]
    assert rs["evidence"]["init_rel_diff"] == 0.0  # same seed: they started identical and drifted apart
    assert checks["data-sharding"]["status"] == "pass"
    # the other checks judge each rank on its own: they pass
    assert all(c["status"] in ("pass", "skip") for n, c in checks.items() if n not in ("rank-sync", "rank-skew"))


def test_same_batches_on_every_rank_fail_data_sharding(runs):
    r = runs["ddp_same_batches"]
    checks = _checks(r["data"])
    ds = checks["data-sharding"]
    assert r["proc"].returncode == 1 and ds["status"] == "fail"
    assert "all 2 ranks train on identical batches" in ds["summary"] and "no DistributedSampler" in ds["summary"]
    assert checks["rank-sync"]["status"] == "pass"


def test_sampler_epoch_never_set_warns_and_confirms_the_static_finding(runs):
    data = runs["ddp_sampler_epoch"]["data"]
    ds = _checks(data)["data-sharding"]
    assert ds["status"] == "warn" and "epoch=0 each time" in ds["summary"] and "set_epoch() is never called" in ds["summary"]
    # --with-static: sampler-missing-set-epoch is found in the source and confirmed by the ranks' samplers
    (link,) = [ln for ln in data["links"] if ln["rule"] == "sampler-missing-set-epoch"]
    assert link["verdict"] == "confirmed" and "with epoch=0 each time" in link["summary"]
    assert any(f["rule"] == "sampler-missing-set-epoch" and f["runtime"]["verdict"] == "confirmed" for f in data["findings"]
               if f.get("origin", "static") == "static")


def test_crashing_rank_is_named(runs):
    r = runs["ddp_crash"]
    text = r["report"]
    assert r["proc"].returncode == 1
    assert "crashed after 3/8 step(s)" in text and "2 rank(s) under torchrun" in text
    assert "error (rank 1): RuntimeError: mat1 and mat2 shapes cannot be multiplied" in text
    assert "ddp_crash" in text and "training-loop" in text and "rank 1: the script crashed after 3" in text
    rank_lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("rank ") and "step(s)" in ln]
    assert rank_lines[0].startswith("rank 0") and "stopped after rank 1 failed" in rank_lines[0]
    assert rank_lines[1].startswith("rank 1") and "crashed" in rank_lines[1] and "RuntimeError" in rank_lines[1]
    assert r["seconds"] < TIMEOUT / 2  # the job was stopped after the failure, not at the timeout


def test_killed_rank_is_named_by_its_signal(runs):
    data = runs["ddp_killed"]["data"]
    assert data["script"]["status"] == "crashed" and data["distributed"]["failed_rank"] == 1
    assert data["script"]["error"]["type"] == "SIGKILL" and "OOM killer" in data["script"]["error"]["message"]
    ranks = {x["rank"]: x for x in data["distributed"]["ranks"]}
    assert ranks[1]["steps_observed"] == 3 and ranks[0]["stopped_by_rank"] == 1


def test_hanging_rank_is_named_with_where_each_rank_was(runs):
    r = runs["ddp_hang"]
    data = r["data"]
    assert data["script"]["status"] == "timeout" and r["proc"].returncode == 1
    assert r["seconds"] < HANG_TIMEOUT + 15
    msg = data["script"]["error"]["message"]
    assert "rank 1 stopped making progress after 3 optimizer step(s)" in msg and "in its own code" in msg, msg
    assert "waiting inside PyTorch" in msg, msg
    ranks = {x["rank"]: x for x in data["distributed"]["ranks"]}
    hang_line = next(i for i, ln in enumerate((FIXTURES / "ddp_hang.py").read_text().splitlines(), 1) if "time.sleep" in ln)
    assert ranks[1]["where"][1] == hang_line and ranks[1]["status"] == "timeout"
