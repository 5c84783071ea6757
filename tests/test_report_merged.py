"""`doctor probe --with-static`: each static finding of a runnable fixture is confirmed by the run's numbers."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

torch = pytest.importorskip("torch")

from conftest import FIXTURES  # noqa: E402

REPORT = os.path.join(FIXTURES, "report")
PAIRINGS = {
    "sched_before_opt.py": "scheduler-before-optimizer",
    "missing_zero_grad.py": "missing-zero-grad",
    "unscaled_accumulation.py": "unscaled-accumulation-loss",
    "softmax_before_ce.py": "softmax-before-cross-entropy",
    "sigmoid_before_bce.py": "sigmoid-before-bce-with-logits",
    "bad_init.py": "bad-init",
    "detached_loss_input.py": "detached-loss-input",
    "non_leaf_parameter.py": "non-leaf-parameter",
    "zero_grad_after_backward.py": "zero-grad-after-backward",
}
# The probe alone (its own checks, its own exit code) fails each headline bug, naming the cause.
PROBE_ALONE = {
    "sched_before_opt.py": ("scheduler-order", "is called before optimizer.step()"),
    "missing_zero_grad.py": ("gradient-clearing", "gradients are never cleared"),
    "unscaled_accumulation.py": ("gradient-accumulation", "undivided"),
    "softmax_before_ce.py": ("loss-input", "cross_entropy receives probabilities"),
    "sigmoid_before_bce.py": ("loss-input", "sigmoid outputs"),
    "zero_grad_after_backward.py": ("gradient-clearing", "cleared between backward() and optimizer.step()"),
    "detached_loss_input.py": ("gradient-flow", "no gradient for"),
    "bad_init.py": ("output-diversity", "identical"),
}


def _run(name):
    p = subprocess.run(
        [sys.executable, "-m", "doctor", "probe", name, "--with-static", "--format", "json", "--steps", "12", "--device", "cpu", "-q", "--timeout", "120"],
        cwd=REPORT, capture_output=True, text=True, timeout=300,
    )
    return name, p


@pytest.fixture(scope="module")
def merged():
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(_run, sorted(PAIRINGS)))


@pytest.mark.parametrize("name", sorted(PAIRINGS))
def test_static_finding_confirmed_at_runtime(merged, name):
    p = merged[name]
    assert "Traceback" not in p.stderr.split("--- script output ---")[0] if "--- script output ---" in p.stderr else True
    payload = json.loads(p.stdout)
    rule = PAIRINGS[name]
    # Both contracts: static findings, and the probe's script/checks.
    assert {"findings", "script", "checks", "links", "series"} <= set(payload)
    static = [f for f in payload["findings"] if f.get("origin") == "static" and f["rule"] == rule]
    assert static, f"no static {rule} finding: {[f['rule'] for f in payload['findings']]}"
    link = next(l for l in payload["links"] if l["rule"] == rule)
    assert link["verdict"] == "confirmed", link
    assert static[0]["runtime"]["verdict"] == "confirmed"
    assert link["summary"].startswith("confirmed at runtime")
    assert p.returncode == 1  # a static error finding fails the run


def test_text_report_says_confirmed(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "doctor", "probe", "missing_zero_grad.py", "--with-static", "--steps", "8", "--device", "cpu", "-q", "--no-color"],
        cwd=REPORT, capture_output=True, text=True, timeout=300,
    )
    assert "missing-zero-grad" in p.stdout and "runtime: confirmed at runtime (gradient-clearing): gradients are never cleared" in p.stdout
    assert "DP101" in p.stdout  # the probe's own table follows


@pytest.mark.parametrize("name", sorted(PROBE_ALONE))
def test_probe_alone_fails_the_headline_bug(merged, name):
    payload = json.loads(merged[name].stdout)
    check, cause = PROBE_ALONE[name]
    c = next(c for c in payload["checks"] if c["name"] == check)
    assert c["status"] == "fail" and cause in c["summary"], c
    assert payload["exit_code"] == 1  # the probe's own verdict, before the static findings are added


def test_cleared_gradients_are_not_blamed_on_unused_layers(merged):
    payload = json.loads(merged["zero_grad_after_backward.py"].stdout)
    flow = next(c for c in payload["checks"] if c["name"] == "gradient-flow")
    assert flow["status"] == "skip" and "unused layer" not in flow["summary"] and "gradient-clearing" in flow["summary"]
    link = next(l for l in payload["links"] if l["rule"] == "zero-grad-after-backward")
    assert link["checks"] == ["gradient-clearing"]
