"""non-finite-loss: the loss became NaN or infinite.

Measures: the loss of every probed step (the scalar passed to ``backward()``, unscaled if a GradScaler
is used, else the functional loss's output). Fails at the first NaN/Inf, reporting the step, the last
finite loss and the learning rate at that point. Other checks judge only the steps before it, since
every later statistic is NaN as well.

Typical causes: a learning rate too high (the loss grows before it overflows), log/sqrt/division of
zero or a negative number, NaN/Inf in the input data, fp16 overflow without loss scaling.

What to do: look at the data of that step (``torch.isfinite(x).all()``), lower the LR or add warm-up,
clip gradients, use ``log_softmax``/``*_with_logits`` losses instead of ``log(softmax)``, add an epsilon.
"""

from __future__ import annotations

import math

from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, finding_at, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="non-finite-loss",
    code="DP103",
    summary="The loss stays finite: no NaN or Inf during the probed steps.",
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
