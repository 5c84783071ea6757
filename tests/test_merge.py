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


def _c(name, status, summary="", **evidence):
    return {"name": name, "status": status, "summary": summary, "evidence": evidence}


def test_accumulation_from_the_backward_loss_ratio():
    undivided = probe(checks=[_c("gradient-accumulation", "fail", "4 backward passes per optimizer step and the loss "
                                 "reaching backward() is the criterion's output undivided", median_ratio=1.0)])
    divided = probe(checks=[_c("gradient-accumulation", "pass", "4 backward passes per step, loss scaled by 0.25", median_ratio=0.25)])
    single = probe(checks=[_c("gradient-accumulation", "skip", "one backward pass per optimizer step")])
    assert verdict("unscaled-accumulation-loss", undivided) == CONFIRMED
    assert verdict("unscaled-accumulation-loss", divided) == CONTRADICTED
    assert verdict("unscaled-accumulation-loss", single) == NOT_OBSERVED


def test_zero_grad_after_backward_links_to_cleared_gradients():
    cleared = probe(checks=[_c("gradient-clearing", "fail", "gradients are cleared between backward() and optimizer.step(): ...")])
    never = probe(checks=[_c("gradient-clearing", "fail", "gradients are never cleared: ...")])
    fine = probe(checks=[_c("gradient-clearing", "pass", "gradients cleared before backward and present at the step")])
    assert verdict("zero-grad-after-backward", cleared) == CONFIRMED
    assert verdict("zero-grad-after-backward", never) is None  # another cause: neither confirmed nor contradicted
    assert verdict("zero-grad-after-backward", fine) == CONTRADICTED
    assert verdict("missing-zero-grad", never) == CONFIRMED
    link = link_findings([finding("zero-grad-after-backward")], cleared)[0]
    assert link.checks == ["gradient-clearing"] and "between backward() and optimizer.step()" in link.summary


def test_softmax_sigmoid_and_nll_from_loss_input():
    probs = probe(checks=[_c("loss-input", "fail", "cross_entropy receives probabilities (values in [0.01, 0.3], every row sums to 1): ...",
                             cross_entropy={"min": 0.01, "max": 0.3})])
    logits = probe(checks=[_c("loss-input", "pass", "cross_entropy: inputs look like what the loss expects",
                              cross_entropy={"min": -3.2, "max": 4.1})])
    assert verdict("softmax-before-cross-entropy", probs) == CONFIRMED
    assert verdict("softmax-before-cross-entropy", logits) == CONTRADICTED
    sig = probe(checks=[_c("loss-input", "fail", "binary_cross_entropy_with_logits receives values inside (0, 1) only",
                           bce_logits={"min": 0.2, "max": 0.8})])
    assert verdict("sigmoid-before-bce-with-logits", sig) == CONFIRMED
    assert verdict("sigmoid-before-bce-with-logits", logits) is None  # no BCE call seen
    nll = probe(checks=[_c("loss-input", "fail", "nll_loss receives raw scores (values up to 3.2 ...)", nll={"min": -2.0, "max": 3.2})])
    assert verdict("nll-without-log-softmax", nll) == CONFIRMED


def test_scheduler_order_confirms():
    p = probe(checks=[_c("scheduler-order", "fail", "StepLR.step() is called before optimizer.step(): ...")])
    assert verdict("scheduler-before-optimizer", p) == CONFIRMED
    p = probe(checks=[_c("scheduler-order", "pass", "StepLR stepped after the optimizer")])
    assert verdict("scheduler-before-optimizer", p) == CONTRADICTED


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
