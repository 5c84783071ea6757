"""Runtime checks and the report on synthetic traces: thresholds, skips, GPU memory logic — no child process."""

from __future__ import annotations

import json
import math

import pytest

from doctor.probe.checks import evaluate_all, load_checks
from doctor.report.probe import render_text, result_to_dict, sparkline
from doctor.probe.runner import ProbeResult
from doctor.probe.stream import _clean, restore
from doctor.probe.trace import ProbeRun, ScriptError, StepRecord


def make_run(losses, **step_fields) -> ProbeRun:
    run = ProbeRun(script="/tmp/train.py", args=[], steps_requested=len(losses), status="stopped")
    run.steps = [StepRecord(step=i, sampled=(i < 3 or i % 5 == 0), loss=v, lr=[1e-3], wall_s=0.01, **step_fields)
                 for i, v in enumerate(losses)]
    run.loss_info = {"kind": "cross_entropy", "classes": 10}
    run.device = {"type": "cpu"}
    return run


def verdicts(run: ProbeRun) -> dict[str, str]:
    return {c.name: c.status for c in evaluate_all(run)}


def test_every_check_module_is_documented():
    import importlib

    checks = load_checks()
    assert len(checks) == 21
    for check, _ in checks:
        module = importlib.import_module(f"doctor.rules.runtime.{check.name.replace('-', '_')}")
        assert module.__doc__ and "What to do" in module.__doc__, check.name
        assert check.code.startswith("DP1")


def test_loss_growing_fails_and_flat_warns():
    grow = make_run([2.3 * (1.05 ** i) for i in range(20)])
    assert verdicts(grow)["loss-decrease"] == "fail"
    flat = make_run([2.3 + 0.01 * ((-1) ** i) for i in range(20)])
    assert verdicts(flat)["loss-decrease"] == "warn"
    down = make_run([2.3 * (0.95 ** i) for i in range(20)])
    assert verdicts(down)["loss-decrease"] == "pass"
    short = make_run([2.3, 2.2, 2.1])
    assert verdicts(short)["loss-decrease"] == "skip"


def test_initial_loss_kinds():
    run = make_run([2.3 * (0.95 ** i) for i in range(10)])
    run.loss_info = {"kind": "bce_logits", "target_mean": 0.5}
    run.steps[0].loss = math.log(2) * 1.1
    assert verdicts(run)["initial-loss"] == "pass"
    run.loss_info = {"kind": "mse", "target_var": 1.0, "target_mean": 50.0}
    run.steps[0].loss = 2501.0
    res = next(c for c in evaluate_all(run) if c.name == "initial-loss")
    assert res.status == "fail" and "not centred" in res.summary
    run.loss_info = {"kind": "l1"}
    assert verdicts(run)["initial-loss"] == "skip"
    run.loss_info = {"kind": "cross_entropy"}  # classes unknown: skip, do not guess
    assert verdicts(run)["initial-loss"] == "skip"


def test_gradient_flow_exploding_and_vanishing():
    run = make_run([1.0 - 0.03 * i for i in range(20)])
    for s in run.steps:
        if s.sampled:
            s.param_grad_norms = {"a": 1.0, "b": 1e-9}
            s.grad_norm = 1.0
    res = next(c for c in evaluate_all(run) if c.name == "gradient-flow")
    assert res.status == "warn" and res.evidence["vanishing"] == ["b"]
    for s in run.steps:
        if s.sampled:
            s.param_grad_norms = {"a": 1e6, "b": 1.0}
            s.grad_norm = 1e6
    assert verdicts(run)["gradient-flow"] == "fail"


def test_checks_after_nan_judge_only_the_finite_prefix():
    losses = [2.3 - 0.05 * i for i in range(10)] + [float("nan")] * 10
    run = make_run(losses)
    for s in run.steps:
        if s.sampled:
            s.grad_norm = float("nan") if s.step >= 10 else 1.0
            s.param_grad_norms = {"w": s.grad_norm}
            s.update_ratio = [float("nan") if s.step >= 10 else 1e-3]
    v = verdicts(run)
    assert v["non-finite-loss"] == "fail"
    assert v["gradient-flow"] == "pass" and v["update-ratio"] == "pass" and v["loss-decrease"] == "pass"


def test_update_ratio_thresholds():
    run = make_run([2.3 * (0.95 ** i) for i in range(10)])
    for s in run.steps:
        s.update_ratio = [2.0] if s.sampled else []
    assert verdicts(run)["update-ratio"] == "fail"
    for s in run.steps:
        s.update_ratio = [0.3] if s.sampled else []
    assert verdicts(run)["update-ratio"] == "warn"
    for s in run.steps:
        s.update_ratio = [1e-6] if s.sampled else []
    assert verdicts(run)["update-ratio"] == "warn"


def test_memory_headroom_on_gpu_estimates_batch_size():
    gib = 1024**3
    run = make_run([2.3 * (0.95 ** i) for i in range(10)], batch_size=32)
    run.device = {"type": "cuda", "name": "H100", "total_bytes": 80 * gib, "nvml": True}
    for s in run.steps:
        s.memory = {"allocated": 2 * gib, "reserved": 12 * gib, "peak_allocated": 10 * gib,
                    "peak_reserved": 12 * gib, "nvml_others": 4 * gib}
    res = next(c for c in evaluate_all(run) if c.name == "memory-headroom")
    assert res.status == "pass"
    assert res.evidence["headroom_gib"] == pytest.approx(64.0)
    assert res.evidence["per_sample_gib"] == pytest.approx(0.25)
    assert res.evidence["max_batch_size_estimate"] == int((76 * 0.9 - 2) / 0.25)
    for s in run.steps:
        s.memory["peak_reserved"] = 75 * gib
    assert next(c for c in evaluate_all(run) if c.name == "memory-headroom").status == "fail"


def test_memory_headroom_oom_and_cpu():
    run = make_run([2.3, 2.2])
    assert verdicts(run)["memory-headroom"] == "skip"
    run.status = "crashed"
    run.error = ScriptError(type="OutOfMemoryError", message="CUDA out of memory", path="/tmp/train.py", line=12, oom=True)
    for s in run.steps:
        s.batch_size = 64
    res = next(c for c in evaluate_all(run) if c.name == "memory-headroom")
    assert res.status == "fail" and res.evidence["suggested_batch_size"] == 32 and res.findings[0].line == 12


def test_output_diversity_identical_rows_and_labelled_single_class():
    run = make_run([2.3 * (0.95 ** i) for i in range(20)])
    for s in run.steps:
        if s.sampled:
            s.output = {"rows": 64, "row_spread": 1e-7, "scale": 1.0}
    assert verdicts(run)["output-diversity"] == "fail"
    for s in run.steps:
        if s.sampled:
            s.output = {"rows": 64, "row_spread": 0.5, "scale": 1.0, "pred_top_frac": 1.0, "label_top_frac": 1.0}
    assert verdicts(run)["output-diversity"] == "pass"  # all labels one class: predicting it is right


def test_training_loop_and_skips_without_steps():
    run = ProbeRun(script="/tmp/train.py", args=[], steps_requested=20, status="completed")
    v = verdicts(run)
    assert v["training-loop"] == "fail"
    assert all(s == "skip" for n, s in v.items() if n != "training-loop")
    assert ProbeResult(run=run, checks=evaluate_all(run)).exit_code == 1


def test_nan_travels_through_the_stream():
    payload = {"loss": float("nan"), "x": [float("inf"), 1.0]}
    back = restore(json.loads(json.dumps(_clean(payload))))
    assert math.isnan(back["loss"]) and back["x"] == [float("inf"), 1.0]


def test_report_text_and_json():
    run = make_run([2.3, 2.0, float("nan")])
    result = ProbeResult(run=run, checks=evaluate_all(run))
    text = render_text(result, colour=True)
    assert "\033[31m" in text and "non-finite-loss" in text and "FAILED" in text
    assert "\033[" not in render_text(result, colour=False)
    data = json.loads(json.dumps(result_to_dict(result), allow_nan=False))
    assert data["series"]["loss"] == [2.3, 2.0, None]
    assert sparkline([1.0, 2.0, None, float("nan")]) == "▁█ ×"
