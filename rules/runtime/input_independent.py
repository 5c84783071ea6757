"""input-independent (recipe): the model's output depends on its input."""

from __future__ import annotations

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="input-independent",
    code="DP119",
    summary="Recipe: the model's output changes when its input changes (zeroed or other samples).",
    recipe=True,
)

#: Outputs closer than one part in a million are the same output up to float noise.
SAME_OUTPUT = 1e-6


PAGE = Sections(
    why=f"""
        Karpathy's input-independent baseline: a model whose output does not change with its input learns the
        label prior at best — the input is overwritten or detached inside `forward`, multiplied by a zero mask,
        or only a bias reaches the output. With `--recipe input-independent`, at the first optimizer step the
        top-level model is called again on the first batch it saw, in eval mode, and on two variants of its
        first tensor argument — all zeros (token id 0 for token inputs) and the batch rolled by one sample —
        and the check measures ‖out(variant) − out(x)‖ / ‖out(x)‖. It fails when every variant that differs
        from the input gives the same output (relative change below {number(SAME_OUTPUT)}). The script's training is
        not disturbed: the random state and every module's train/eval flag are restored.

        Cost: two extra forward passes without gradient, once, inside the normal run.

        What to do: follow the input through `forward()` (a `zeros_like`, an overwritten variable, a `detach`
        or a mask that drops everything).
    """,
    known_problems="""
        Skips when the model is not called with a tensor argument before the first step, when its output is
        not a floating-point tensor, and when no variant differs from the input. Only the first tensor
        argument is varied: a model whose real input comes second is judged on the wrong argument.
    """,
    bad="""
        def forward(self, x):
            return self.net(x * self.feature_mask)   # a mask of zeros that select_features() never filled
    """,
    good="""
        def forward(self, x):
            return self.net(x)
    """,
)


def evaluate(run: ProbeRun):
    ex = run.experiments.get(CHECK.name) or run.experiments.get("*")
    if ex is None:
        raise Skip("the experiment did not run (no step, or the model was not seen before the first step)")
    if ex.get("skipped"):
        raise Skip(str(ex["skipped"]))
    changes = {k: v for k, v in (ex.get("relative_change") or {}).items()
               if v is not None and (ex.get("input_differs") or {}).get(k, True)}
    if not changes:
        raise Skip("no input variant differed from the batch (or the output changed shape)", ex)
    shown = ", ".join(f"{k}: {fmt(v)}" for k, v in changes.items())
    if all(v < SAME_OUTPUT for v in changes.values()):
        return result(CHECK, FAIL, f"the model's output does not depend on its input (relative change {shown}): "
                      "the input is overwritten, detached or masked away inside forward()", ex,
                      "Follow the input through forward(): a zeros_like, an overwritten variable, a detach or a mask that drops it.")
    return result(CHECK, PASS, f"output changes with the input ({shown})", ex)
