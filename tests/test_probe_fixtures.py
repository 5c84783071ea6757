"""The probe end to end on CPU: every fixture script trips exactly its check, the healthy ones pass all,
and crashing / hanging / exiting / non-training / exception-swallowing scripts get a clear report in time.

All scripts run once, in parallel, in a module-scoped fixture (each is a child process importing torch).
"""

from __future__ import annotations

import os
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch")

from doctor.probe.runner import ProbeResult, run_probe  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probe"
STEPS = 20
TIMEOUT = 60.0
HANG_TIMEOUT = 20.0  # generous: under a loaded CI box importing torch alone can take 10 s
#: Seconds a stopped/killed run may take beyond its timeout (kill, reap, collect).
SLACK = 4.0

CHECK_NAMES = [
    "training-loop", "initial-loss", "non-finite-loss", "loss-decrease", "gradient-flow",
    "update-ratio", "dead-activations", "output-diversity", "memory-headroom", "input-pipeline",
    "loss-input", "scheduler-order", "gradient-accumulation", "gradient-clearing", "optimizer-coverage",
    "learning-rate", "class-balance",
]  # the recipe checks (overfit-batch, input-independent, batch-independence, lr-range) only with --recipe
# fixture -> the one check it must trip (warn or fail); all other checks must pass or skip.
TRIPS = {
    "trip_training_loop.py": "training-loop",
    "trip_initial_loss.py": "initial-loss",
    "trip_non_finite_loss.py": "non-finite-loss",
    "trip_loss_decrease.py": "loss-decrease",
    "trip_gradient_flow.py": "gradient-flow",
    "trip_update_ratio.py": "update-ratio",
    "trip_dead_activations.py": "dead-activations",
    "trip_output_diversity.py": "output-diversity",
    "trip_input_pipeline.py": "input-pipeline",
}
HEALTHY = ["healthy_classifier.py", "healthy_regression.py"]
BAD_SCRIPTS = ["crash.py", "sys_exit.py", "no_training.py", "swallow_exceptions.py", "segfault.py"]

SCHEDULER_FIRST = """
    import torch
    from torch import nn
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    for _ in range(50):
        sched.step()  # before optimizer.step(): PyTorch warns
        loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ProbeResult, float]]:
    tmp = tmp_path_factory.mktemp("probe_scripts")
    (tmp / "syntax_error.py").write_text("import torch\nfor x in range(3)\n    print(x)\n")
    (tmp / "scheduler_first.py").write_text(textwrap.dedent(SCHEDULER_FIRST))
    (tmp / "exit_3.py").write_text("import sys\nsys.exit(3)\n")
    jobs: dict[str, tuple[str, float]] = {name: (str(FIXTURES / name), TIMEOUT) for name in [*TRIPS, *HEALTHY, *BAD_SCRIPTS]}
    jobs["hang.py"] = (str(FIXTURES / "hang.py"), HANG_TIMEOUT)
    for name in ("syntax_error.py", "scheduler_first.py", "exit_3.py"):
        jobs[name] = (str(tmp / name), TIMEOUT)

    def go(item: tuple[str, tuple[str, float]]) -> tuple[str, tuple[ProbeResult, float]]:
        name, (path, timeout) = item
        t0 = time.monotonic()
        res = run_probe(path, [], steps=STEPS, device="cpu", timeout=timeout)
        return name, (res, time.monotonic() - t0)

    # hang first: it is the longest; 3 workers keep 2 cores busy while children start up.
    order = sorted(jobs.items(), key=lambda kv: kv[0] != "hang.py")
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(go, order))


def _statuses(res: ProbeResult) -> dict[str, str]:
    return {c.name: c.status for c in res.checks}


def test_all_checks_present(runs):
    res, _ = runs["healthy_classifier.py"]
    assert [c.name for c in res.checks] == CHECK_NAMES
    assert len({c.code for c in res.checks}) == len(CHECK_NAMES)


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_passes_everything(runs, name):
    res, _ = runs[name]
    statuses = _statuses(res)
    assert res.run.status == "stopped" and res.run.steps_observed == STEPS
    assert all(s in ("pass", "skip") for s in statuses.values()), {n: (c.status, c.summary) for n, c in zip(statuses, res.checks)}
    assert res.exit_code == 0
    # the checks that can judge a healthy CPU run must actually pass, not skip
    for name_ in ("training-loop", "initial-loss", "non-finite-loss", "loss-decrease", "gradient-flow",
                  "update-ratio", "dead-activations", "output-diversity"):
        assert statuses[name_] == "pass", (name_, statuses[name_])
    assert statuses["memory-headroom"] == "skip"


@pytest.mark.parametrize("name,check", sorted(TRIPS.items()))
def test_fixture_trips_exactly_its_check(runs, name, check):
    res, _ = runs[name]
    tripped = {c.name: c.status for c in res.checks if c.status in ("warn", "fail")}
    assert list(tripped) == [check], {c.name: (c.status, c.summary) for c in res.checks}


def test_healthy_regression_reports_frozen_not_error(runs):
    res, _ = runs["healthy_regression.py"]
    gf = next(c for c in res.checks if c.name == "gradient-flow")
    assert gf.status == "pass"
    assert sorted(gf.evidence["frozen"]) == ["embed.bias", "embed.weight"]
    assert gf.evidence["no_grad"] == []


def test_gradient_flow_names_the_unused_layer(runs):
    res, _ = runs["trip_gradient_flow.py"]
    gf = next(c for c in res.checks if c.name == "gradient-flow")
    assert gf.status == "fail"
    assert sorted(gf.evidence["no_grad"]) == ["proj.bias", "proj.weight"]
    assert "proj.weight" in gf.summary


def test_initial_loss_ratio_and_finding(runs):
    res, _ = runs["trip_initial_loss.py"]
    il = next(c for c in res.checks if c.name == "initial-loss")
    assert il.status == "fail" and il.evidence["classes"] == 10 and il.evidence["ratio"] > 3
    (finding,) = il.findings
    assert finding.origin == "runtime" and finding.rule == "initial-loss" and finding.code == il.code
    src = (FIXTURES / "trip_initial_loss.py").read_text().splitlines()
    assert "cross_entropy" in src[finding.line - 1]


def test_non_finite_loss_step_and_last_value(runs):
    res, _ = runs["trip_non_finite_loss.py"]
    nf = next(c for c in res.checks if c.name == "non-finite-loss")
    assert nf.status == "fail" and nf.evidence["step"] == 12
    assert nf.evidence["last_finite_loss"] is not None and nf.evidence["lr"] == [1e-3]
    assert nf.findings and nf.findings[0].line > 0


def test_update_ratio_flags_the_zero_lr_group(runs):
    res, _ = runs["trip_update_ratio.py"]
    ur = next(c for c in res.checks if c.name == "update-ratio")
    groups = ur.evidence["groups"]
    assert groups[1]["median_ratio"] == 0 and groups[1]["lr"] == 0
    assert 1e-5 < groups[0]["median_ratio"] < 0.1
    assert "group 1" in ur.summary and "group 0" not in ur.summary


def test_crash_report(runs):
    res, dt = runs["crash.py"]
    assert res.run.status == "crashed" and res.exit_code == 1
    assert res.run.steps_observed == 3
    err = res.run.error
    assert err.type == "RuntimeError" and err.path.endswith("crash.py")
    assert "model(x)" in (FIXTURES / "crash.py").read_text().splitlines()[err.line - 1]


def test_syntax_error_is_a_crash_with_line(runs):
    res, _ = runs["syntax_error.py"]
    assert res.run.status == "crashed" and res.exit_code == 1
    assert res.run.error.type == "SyntaxError" and res.run.error.line == 2
    tl = next(c for c in res.checks if c.name == "training-loop")
    assert tl.status == "fail" and tl.findings and tl.findings[0].line == 2


def test_hang_times_out_in_time(runs):
    res, dt = runs["hang.py"]
    assert res.run.status == "timeout" and res.exit_code == 1
    assert res.run.steps_observed == 4  # step 3 is unsampled: sent on the SIGTERM flush
    assert dt < HANG_TIMEOUT + SLACK
    assert any("never comes" in ln for ln in res.run.output_tail)


def test_sys_exit_before_training(runs):
    res, dt = runs["sys_exit.py"]
    assert res.run.status == "completed" and res.run.steps_observed == 0 and res.exit_code == 1
    tl = next(c for c in res.checks if c.name == "training-loop")
    assert tl.status == "fail" and "without a single optimizer step" in tl.summary


def test_sys_exit_nonzero_is_a_crash(runs):
    res, _ = runs["exit_3.py"]
    assert res.run.status == "crashed" and res.run.exit_code == 1 and res.exit_code == 1
    assert "sys.exit(3)" in res.run.error.message


def test_no_training(runs):
    res, _ = runs["no_training.py"]
    assert res.run.status == "completed" and res.exit_code == 1
    assert _statuses(res)["training-loop"] == "fail"
    assert all(s == "skip" for n, s in _statuses(res).items() if n != "training-loop")


def test_swallowed_stop_is_still_stopped(runs):
    res, dt = runs["swallow_exceptions.py"]
    assert res.run.status == "stopped" and res.run.steps_observed == STEPS
    assert dt < 20


def test_segfault_reported_from_stream(runs):
    res, _ = runs["segfault.py"]
    assert res.run.status == "crashed" and res.exit_code == 1
    assert res.run.error.type == "SIGSEGV" and res.run.steps_observed == 3


def test_python_warnings_are_streamed(runs):
    res, _ = runs["scheduler_first.py"]
    assert any("lr_scheduler.step()" in w["message"] and w["category"] == "UserWarning" for w in res.run.warnings)


def test_json_contract(runs):
    import json

    res, _ = runs["healthy_classifier.py"]
    data = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    script = data["script"]
    assert set(script) >= {"path", "status", "error", "steps_observed", "wall_seconds"}
    assert script["status"] == "stopped" and script["steps_observed"] == STEPS and script["error"] is None
    assert data["device"]["type"] == "cpu"
    assert [c["name"] for c in data["checks"]] == CHECK_NAMES
    for c in data["checks"]:
        assert set(c) >= {"name", "status", "summary", "evidence", "advice"}
        assert c["status"] in ("pass", "warn", "fail", "skip")
    series = data["series"]
    assert len(series["loss"]) == len(series["step"]) == STEPS
    assert set(series["param_grad_norm"]) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    sampled = [i for i, s in enumerate(series["sampled"]) if s]
    assert sampled == [0, 1, 2, 5, 10, 15]
    assert all(series["grad_norm"][i] is not None for i in sampled)
    assert data["findings"] == []


def test_json_of_nan_run_is_strict(runs):
    import json

    res, _ = runs["trip_non_finite_loss.py"]
    text = json.dumps(res.to_dict(), allow_nan=False)  # raises on NaN
    data = json.loads(text)
    assert data["series"]["loss"][12] is None
    assert data["findings"][0]["origin"] == "runtime"
    assert os.path.basename(data["script"]["path"]) == "trip_non_finite_loss.py"
