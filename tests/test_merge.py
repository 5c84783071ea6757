"""Linking static findings with runtime evidence, on synthetic probe payloads (no torch needed)."""

from doctor.core.findings import Finding, Severity
from doctor.report.merged import CONFIRMED, CONTRADICTED, NOT_OBSERVED, link_findings, merged_payload


def finding(rule, line=10, path="train.py"):
    return Finding(path, line, 1, line, 5, rule, "DRxxx", Severity.ERROR, "msg")


def probe(**kw):
    base = {"script": {"steps_observed": 10, "status": "stopped"}, "checks": [], "warnings": [], "series": {}, "findings": []}
    base.update(kw)
    return base


def verdict(rule, payload):
    links = link_findings([finding(rule)], payload)
    return links[0].verdict if links else None


def test_scheduler_warning_confirms():
    p = probe(warnings=[{"message": "Detected call of `lr_scheduler.step()` before `optimizer.step()`. In PyTorch 1.1.0 and later..."}], series={"lr": [[0.09, 0.09]]})
    assert verdict("scheduler-before-optimizer", p) == CONFIRMED
    assert verdict("scheduler-before-optimizer", probe()) == NOT_OBSERVED


def test_missing_zero_grad_growth():
    grows = probe(series={"grad_norm": [1.0, None, 2.1, 3.0, 4.2, 5.1], "loss": [2.3, 2.3, 2.29, 2.31, 2.3, 2.3]})
    flat = probe(series={"grad_norm": [1.0, 0.9, 1.1, 1.0, 0.95, 1.02], "loss": [2.3, 2.2, 2.1, 2.0, 1.9, 1.8]})
    assert verdict("missing-zero-grad", grows) == CONFIRMED
    assert verdict("missing-zero-grad", flat) == CONTRADICTED
    assert verdict("missing-zero-grad", probe(series={"grad_norm": [1.0]})) is None


def test_accumulation_ratio():
    undivided = probe(series={"backwards": [4, 4, 4], "accumulation_grad_ratio": [3.9, 4.1, 3.8]})
    divided = probe(series={"backwards": [4, 4, 4], "accumulation_grad_ratio": [1.0, 0.97, 1.05]})
    single = probe(series={"backwards": [1, 1], "accumulation_grad_ratio": [1.0, 1.0]})
    assert verdict("unscaled-accumulation-loss", undivided) == CONFIRMED
    assert verdict("unscaled-accumulation-loss", divided) == CONTRADICTED
    assert verdict("unscaled-accumulation-loss", single) == NOT_OBSERVED


def test_softmax_and_sigmoid_ranges():
    probs = probe(loss={"kind": "cross_entropy", "classes": 10, "input_min": 0.01, "input_max": 0.3, "input_row_sum": 1.0})
    logits = probe(loss={"kind": "cross_entropy", "classes": 10, "input_min": -3.2, "input_max": 4.1, "input_row_sum": 0.4})
    assert verdict("softmax-before-cross-entropy", probs) == CONFIRMED
    assert verdict("softmax-before-cross-entropy", logits) == CONTRADICTED
    sig = probe(loss={"kind": "bce_logits", "input_min": 0.2, "input_max": 0.8})
    assert verdict("sigmoid-before-bce-with-logits", sig) == CONFIRMED


def test_bad_init_and_gradient_flow_from_checks():
    p = probe(checks=[{"name": "output-diversity", "status": "fail", "summary": "all rows identical", "evidence": {}}])
    assert verdict("bad-init", p) == CONFIRMED
    p = probe(checks=[{"name": "gradient-flow", "status": "fail", "summary": "2 params without grad", "evidence": {"no_grad": ["fc.weight", "fc.bias"]}}])
    assert verdict("detached-loss-input", p) == CONFIRMED
    assert verdict("non-leaf-parameter", p) == CONFIRMED
    p = probe(checks=[{"name": "gradient-flow", "status": "pass", "summary": "ok", "evidence": {}}])
    assert verdict("detached-loss-input", p) == CONTRADICTED


def test_merged_payload_keeps_both_contracts(tmp_path):
    src = tmp_path / "train.py"
    src.write_text("\n".join(f"line {i}" for i in range(1, 21)) + "\n")
    f = finding("missing-zero-grad", path=str(src))
    p = probe(series={"grad_norm": [1, 2, 3, 4, 5], "loss": [1, 1, 1, 1, 1]}, checks=[{"name": "training-loop", "status": "pass"}])
    out = merged_payload([f], p, [])
    assert out["script"]["steps_observed"] == 10 and out["checks"][0]["name"] == "training-loop"
    (static,) = out["findings"]
    assert static["rule"] == "missing-zero-grad" and static["runtime"]["verdict"] == CONFIRMED
    assert [s["line"] for s in static["source"]] == [8, 9, 10, 11, 12]
    assert out["links"][0]["verdict"] == CONFIRMED
