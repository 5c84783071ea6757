"""non-finite-loss: the loss became NaN or infinite."""

from __future__ import annotations

import math

from doctor.core.page import Sections
from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, finding_at, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="non-finite-loss",
    code="DP103",
    summary="The loss stays finite: no NaN or Inf during the probed steps.",
)


PAGE = Sections(
    why="""
        Once the loss is NaN or infinite, every gradient and then every weight becomes NaN: the run is lost,
        often silently (the loss prints as `nan` and training goes on). The check reads the loss of every
        probed step (the scalar passed to `backward()`, unscaled when a GradScaler is used, else the
        functional loss's output) and fails at the first NaN or Inf, reporting the step, the last finite loss
        and the learning rate at that point. The other checks then judge only the steps before it.

        Typical causes: a learning rate too high (the loss grows before it overflows), log/sqrt/division of
        zero or a negative number, NaN/Inf in the input data, fp16 overflow without loss scaling.

        What to do: look at the data of that step (`torch.isfinite(x).all()`), lower the LR or add warm-up,
        clip gradients, use `log_softmax`/`*_with_logits` losses instead of `log(softmax)`, add an epsilon.
    """,
    known_problems="""
        Only the loss is watched: NaN in gradients or weights that has not reached the loss yet (or never
        does, behind a `nan_to_num`) is not reported here. A script whose loss is neither a scalar passed to
        `backward()` nor a `torch.nn.functional` loss gives no loss, and the check is skipped.
    """,
    bad="""
        probs = F.softmax(model(x), dim=1)
        loss = F.nll_loss(torch.log(probs), y)   # log(0) = -inf once a probability underflows
    """,
    good="""
        loss = F.cross_entropy(model(x), y)      # log_softmax inside, stable for any logits
    """,
)


def evaluate(run: ProbeRun):
    losses = run.losses
    if all(v is None for v in losses):
        raise Skip("no loss seen (no backward() on a scalar and no torch.nn.functional loss)")
    idx = run.first_nonfinite_step()
    if idx is None:
        return result(CHECK, PASS, f"all {sum(v is not None for v in losses)} losses finite",
                      {"steps_with_loss": sum(v is not None for v in losses)})
    step = run.steps[idx]
    last = next((v for v in reversed(losses[:idx]) if v is not None and math.isfinite(v)), None)
    value = "nan" if step.loss != step.loss else ("inf" if step.loss > 0 else "-inf")
    evidence = {"step": step.step, "value": value, "last_finite_loss": last, "last_finite_step":
                next((s.step for s in reversed(run.steps[:idx]) if s.loss is not None), None), "lr": step.lr}
    summary = f"loss is {value} at step {step.step} (last finite {fmt(last)}, lr {', '.join(fmt(x) for x in step.lr)})"
    li = run.loss_info
    findings = finding_at(CHECK, li.get("path"), li.get("line"), f"loss became {value} at step {step.step}", evidence=evidence)
    return result(CHECK, FAIL, summary, evidence,
                  "Check the batch of that step for NaN/Inf, lower the LR or add warm-up and gradient clipping, "
                  "and prefer log_softmax / *_with_logits losses over log(softmax(x)).", findings)
