"""optimizer-coverage: every parameter that receives a gradient is held by an optimizer."""

from __future__ import annotations

from doctor.core.page import Sections
from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="optimizer-coverage",
    code="DP115",
    summary="Every parameter that receives a gradient is held by an optimizer.",
)

#: Names listed in the summary; the evidence has them all.
SHOW = 4


PAGE = Sections(
    why="""
        A parameter that takes part in the forward and backward passes but that no optimizer holds never
        learns, and nothing else says so: typically an optimizer built from part of the model
        (`model.encoder.parameters()`), or a layer added after the optimizer was created. On sampled steps the
        probe lists the parameters of the top-level model(s) whose `.grad` is set at the primary optimizer's
        step, and compares them with the parameters held by every optimizer that stepped during the run (all
        of them, so a GAN's generator is not blamed on the discriminator's optimizer). It fails for a
        parameter with a gradient that no optimizer holds.

        What to do: build the optimizer from `model.parameters()` once the model is complete, or add the
        missing parameters with `optimizer.add_param_group()`; freeze on purpose with `requires_grad_(False)`.
    """,
    known_problems="""
        Frozen parameters (no gradient) and parameters that get no gradient (unused layers, gradient-flow's
        business) are not reported. An optimizer that first steps after the probe stopped is not known: its
        parameters would read as unheld. Scripts without a `torch.optim` optimizer are skipped.
    """,
    bad="""
        model = nn.Sequential(backbone, head)
        optimizer = torch.optim.Adam(backbone.parameters(), lr=1e-3)   # the head never learns
    """,
    good="""
        model = nn.Sequential(backbone, head)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    """,
)


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
