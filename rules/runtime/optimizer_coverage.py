"""optimizer-coverage: every parameter that receives a gradient is held by an optimizer.

Measures, on sampled steps, the parameters of the top-level model(s) whose ``.grad`` is set at the primary
optimizer's step, against the parameters held by every optimizer that stepped during the run (all of them,
so a GAN's generator is not blamed on the discriminator's optimizer).

- fail: a parameter gets a gradient on the training path but no optimizer holds it: the layer takes part
  in the forward and backward passes but never learns — typically an optimizer built from part of the
  model (``model.encoder.parameters()``), or a layer added after the optimizer was created.

Stays silent on frozen parameters (``requires_grad=False``: no gradient), on parameters that get no gradient
(unused layers are gradient-flow's business), and on scripts without a ``torch.optim`` optimizer.

What to do: build the optimizer from ``model.parameters()`` after the model is complete (or add the missing
group with ``optimizer.add_param_group``); freeze on purpose with ``requires_grad_(False)``.
"""

from __future__ import annotations

from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="optimizer-coverage",
    code="DP115",
    summary="Every parameter that receives a gradient is held by an optimizer.",
)

#: Names listed in the summary; the evidence has them all.
SHOW = 4


def evaluate(run: ProbeRun):
    if run.manual_updates:
        raise Skip("the script updates weights by hand: there is no optimizer to hold the parameters")
    if not run.summary:
        raise Skip("the run ended before the probe's end-of-run summary (crash or kill)")
    unheld = list(run.summary.get("unheld_grads") or [])
    optimizers = int(run.summary.get("optimizers_seen") or 0)
    evidence = {"unheld_with_gradient": unheld, "optimizers_seen": optimizers}
    if unheld:
        more = f" (+{len(unheld) - SHOW} more)" if len(unheld) > SHOW else ""
        return result(CHECK, FAIL, f"{', '.join(unheld[:SHOW])}{more}: receive gradients but no optimizer holds them, so they "
                      f"never learn ({optimizers} optimizer(s) seen)", evidence,
                      "Build the optimizer from model.parameters() once the model is complete, or add the missing "
                      "parameters with optimizer.add_param_group(); freeze on purpose with requires_grad_(False).")
    held = sum(1 for p in run.params if p.in_optimizer)
    return result(CHECK, PASS, f"every parameter with a gradient is held by one of {optimizers} optimizer(s) "
                               f"({held} in the primary)", evidence)
