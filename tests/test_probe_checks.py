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
    assert len(checks) == 24
    for check, _ in checks:
        module = importlib.import_module(f"doctor.rules.runtime.{check.name.replace('-', '_')}")
        # The page (doctor.core.page.Sections) says what to do; test_pages checks every section.
        assert "What to do" in module.PAGE.why, check.name
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


# ---------------------------------------------------------------------------------------------- issue 12
def _one(run: ProbeRun, name: str):
    return next(c for c in evaluate_all(run) if c.name == name)


def test_scheduler_order_from_observed_events():
    run = make_run([2.3 * (0.95 ** i) for i in range(10)])
    first = {"scheduler": "StepLR", "index": 1, "optimizer_steps": 0, "lr_before": [0.1], "lr_after": [0.05],
             "base_lrs": [0.1], "scaler": False, "path": "/tmp/train.py", "line": 17}
    run.scheduler_steps = [first]
    res = _one(run, "scheduler-order")
    assert res.status == "fail" and "lr 0.05 instead of the schedule's first value 0.1" in res.summary
    assert res.findings[0].line == 17
    run.scheduler_steps = [dict(first, scaler=True)]
    assert _one(run, "scheduler-order").status == "skip"  # AMP's skipped first steps: PyTorch's known false alarm
    run.scheduler_steps = [dict(first, index=i) for i in (1, 2, 3)]
    assert _one(run, "scheduler-order").status == "warn"  # fast-forwarding a resumed schedule
    run.scheduler_steps = [dict(first, optimizer_steps=1)]
    assert _one(run, "scheduler-order").status == "pass"
    run.scheduler_steps = []
    assert _one(run, "scheduler-order").status == "skip"


def test_learning_rate_judges_the_trajectory_not_first_vs_last():
    nanogpt_lr01 = [4.42, 12.0, 9.5, 7.1, 5.0, 3.9, 3.6, 3.5, 3.4, 3.3]  # first-vs-last says "decreasing"
    run = make_run(nanogpt_lr01)
    assert verdicts(run)["loss-decrease"] == "pass"
    res = _one(run, "learning-rate")
    assert res.status == "fail" and "rose from 4.42 to 12" in res.summary
    assert verdicts(make_run([2.3 * (0.9 ** i) for i in range(20)]))["learning-rate"] == "pass"
    noisy = [6.21, 7.6, 6.54, 6.43, 8.28, 6.32, 5.35, 6.6, 8.52, 3.99, 7.73, 6.47]  # MSE batch noise, no LR problem
    assert verdicts(make_run(noisy))["learning-rate"] == "pass"
    mnist_adadelta = [2.296, 5.329, 2.464, 2.155, 1.892, 1.43, 1.365, 1.04, 0.652, 0.509]  # one spike, recovered
    assert verdicts(make_run(mnist_adadelta))["learning-rate"] == "pass"
    tiny_nanogpt_lr01 = [3.47, 3.16, 4.01, 4.48, 4.18, 4.28, 4.03, 3.55, 3.41, 3.35, 3.21, 3.18]
    run = make_run(tiny_nanogpt_lr01)
    for s in run.steps[:3]:
        s.update_ratio = [0.6, 0.04]  # the matrices' group is rewritten, the LayerNorm group barely moves
    res = _one(run, "learning-rate")
    assert res.status == "fail" and res.evidence["early_update_ratio"] == 0.6
    swinging = [2.3, 2.2, 6.0, 1.9, 7.5, 2.1, 8.0, 2.0, 6.5, 2.2]
    assert "swings" in _one(make_run(swinging), "learning-rate").summary


def test_gradient_clearing_both_ways():
    run = make_run([2.3] * 12)
    for s in run.steps:
        if s.sampled:
            s.grad_after_backward, s.grad_before_backward, s.grad_norm = [4.0], [0.0], None  # gone at the step
    res = _one(run, "gradient-clearing")
    assert res.status == "fail" and "between backward() and optimizer.step()" in res.summary
    for s in run.steps:
        if s.sampled:
            s.grad_before_backward, s.grad_norm, s.backwards = [3.0 * s.step], 3.0 * (s.step + 1), 1
            s.grad_after_backward = [s.grad_norm]
    res = _one(run, "gradient-clearing")
    assert res.status == "fail" and "never cleared" in res.summary
    for s in run.steps:
        if s.sampled:
            s.grad_before_backward = [0.0]
    assert _one(run, "gradient-clearing").status == "pass"


def test_class_balance_stream_and_batches():
    run = make_run([2.3 * (0.95 ** i) for i in range(10)])
    run.loss_info["target_shape"] = [64]
    run.summary = {"targets": {"class_counts": [640, 0, 1, 0]}}
    assert _one(run, "class-balance").status == "fail"
    run.loss_info["target_shape"] = [8, 32, 32]  # per-pixel labels: a dominant background is normal
    assert _one(run, "class-balance").status == "warn"
    run.loss_info["target_shape"] = [64]
    run.summary = {"targets": {"class_counts": [300, 340, 0, 0]}}
    for s in run.steps:
        if s.sampled:
            s.output = {"label_top_frac": 1.0}
    res = _one(run, "class-balance")
    assert res.status == "warn" and "single class" in res.summary
    run.summary = {"targets": {"binary_counts": [2, 900], "binary_hard": True}}
    assert _one(run, "class-balance").status == "warn"  # rare positives can be real: never a fail
    run.summary = {"targets": {}}
    assert _one(run, "class-balance").status == "skip"


def test_initial_loss_reduction_and_terms():
    run = make_run([7.05e4, 5e4, 4e4, 3e4, 2e4, 1e4])
    run.loss_terms = [{"kind": "bce", "reduction": "sum", "value": 128 * 784 * 0.70, "count": 128 * 784, "target_mean": 0.13}]
    res = _one(run, "initial-loss")
    assert res.status == "pass" and "sum over 100352 elements" in res.summary
    # four micro-batches of one criterion line: averaged, not judged by the worst
    run.loss_terms = [{"kind": "cross_entropy", "reduction": "mean", "classes": 4, "value": v, "path": "t.py", "line": 9}
                      for v in (1.45, 1.35, 2.09, 1.40)]
    assert _one(run, "initial-loss").status == "pass"
    # a GAN: two BCE terms, each ~ln 2
    run.loss_terms = [{"kind": "bce", "reduction": "mean", "value": 0.70, "line": 20, "target_mean": 1.0},
                      {"kind": "bce", "reduction": "mean", "value": 0.69, "line": 24, "target_mean": 0.0}]
    assert _one(run, "initial-loss").status == "pass"
    run.loss_terms = [{"kind": "cross_entropy", "reduction": "mean", "classes": 10, "value": 23.0, "path": "/tmp/t.py", "line": 3},
                      {"kind": "l1", "reduction": "mean", "value": 0.3}]
    res = _one(run, "initial-loss")
    assert res.status == "fail" and res.evidence["not_judged"] and res.findings[0].line == 3


def test_training_loop_advice_depends_on_the_error():
    def crashed(err: ScriptError) -> str:
        run = ProbeRun(script="/tmp/train.py", args=[], steps_requested=20, status="crashed", error=err)
        return _one(run, "training-loop").advice

    missing = crashed(ScriptError(type="ModuleNotFoundError", message="No module named 'wandb'"))
    load = crashed(ScriptError(type="UnpicklingError", message="Weights only load failed.",
                               traceback=['  File "/x/torch/serialization.py", line 1, in load']))
    nofile = crashed(ScriptError(type="FileNotFoundError", message="[Errno 2] No such file or directory: 'data.bin'"))
    assert "Install wandb" in missing and "torch.load" in load and "current directory" in nofile
    assert len({missing, load, nofile}) == 3


def test_crash_after_steps_is_not_a_pass():
    run = make_run([2.3, 2.2, 2.1])
    run.status = "crashed"
    run.error = ScriptError(type="RuntimeError", message="boom", path="/tmp/train.py", line=12,
                            traceback=["Traceback (most recent call last):", '  File "/tmp/train.py", line 12, in <module>', "RuntimeError: boom"])
    result = ProbeResult(run=run, checks=evaluate_all(run))
    tl = next(c for c in result.checks if c.name == "training-loop")
    assert tl.status == "fail" and "crashed after 3" in tl.summary
    text = render_text(result)
    assert "FAILED" in text and "RuntimeError: boom" in text and "traceback" in text
    from doctor.report.html import render_html

    page = render_html(result_to_dict(result))
    assert "Why the run ended: RuntimeError" in page and "line 12, in &lt;module&gt;" in page
    assert ">pass<" not in page and "pass*" in page  # no green all-clear after a crash


def test_output_diversity_verdict_and_summary_agree():
    run = make_run([2.3 * (0.95 ** i) for i in range(20)])
    for s in run.steps:
        if s.sampled:
            s.output = {"rows": 64, "row_spread": 0.5, "scale": 1.0, "pred_top_frac": 1.0, "label_top_frac": 0.97}
    res = _one(run, "output-diversity")
    assert res.status == "pass" and "as is up to 97% of the labels" in res.summary
    for s in run.steps:
        if s.sampled:
            s.output = {"rows": 64, "row_spread": 0.5, "scale": 1.0, "pred_top_frac": 0.9, "label_top_frac": 0.2}
    res = _one(run, "output-diversity")
    assert res.status == "pass" and "at most 90% of rows" in res.summary
    for s, top in zip([s for s in run.steps if s.sampled], [0.3, 0.5, 0.9, 1.0, 0.97, 1.0]):
        s.output = {"rows": 64, "row_spread": 0.5, "scale": 1.0, "pred_top_frac": top, "label_top_frac": 0.2}
    res = _one(run, "output-diversity")  # one class on some judged steps only: a pass that says so
    assert res.status == "pass" and "97%-100% of rows (one class on some judged steps, not on all" in res.summary


def test_probe_options_travel_in_one_piece():
    from doctor.probe.options import OptionsError, ProbeOptions, parse_recipe

    opts = ProbeOptions(steps=8, device="cpu", recipe=parse_recipe("lr-range,overfit-batch"))
    back = ProbeOptions.from_json(opts.to_json())
    assert back == opts and back.recipe == ("overfit-batch", "lr-range")
    assert parse_recipe("all") == ("overfit-batch", "input-independent", "batch-independence", "lr-range")
    assert [o.mode for o in opts.recipe_runs()] == ["overfit-batch", "lr-range"]
    assert opts.normal_run().experiments == ()
    assert ProbeOptions(recipe=parse_recipe("batch-independence")).normal_run().experiments == ("batch-independence",)
    with pytest.raises(OptionsError):
        parse_recipe("overfit")
    with pytest.raises(OptionsError):
        ProbeOptions(steps=0).validate()


def test_long_traceback_keeps_the_script_line_and_the_exception():
    from doctor.report.probe import traceback_lines

    lib = '  File "/venv/site-packages/torch/nn/modules/module.py", line {}, in _call_impl\n    return forward_call(*args)\n           ^^^^^^^^^^^^^^^^^^^'
    entries = ['  File "/tmp/train.py", line 46, in <module>\n    loss = loss_fn(model(x), y)\n                   ^^^^^^^^']
    entries += [lib.format(i) for i in range(12)] + ["RuntimeError: mat1 and mat2 shapes cannot be multiplied"]
    out = traceback_lines(entries)
    assert len(out) <= 14
    assert out[0] == '  File "/tmp/train.py", line 46, in <module>' and out[1].strip() == "loss = loss_fn(model(x), y)"
    assert "line(s) left out" in out[2] and out[3].lstrip().startswith('File "')
    assert out[-1] == "RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    assert not any(ln.strip(" ^") == "" for ln in out)
    titled = traceback_lines(["Traceback (most recent call last):"] + entries)
    assert titled[:3] == ["Traceback (most recent call last):"] + out[:2] and titled[-1] == out[-1] and len(titled) <= 14
    short = ['  File "/tmp/train.py", line 3, in <module>\n    f()\n    ^^^', "ValueError: x"]
    assert traceback_lines(short) == "\n".join(short).splitlines()  # short ones are shown whole, markers included
