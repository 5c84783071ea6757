"""input-independent (recipe): the model's output depends on its input.

Karpathy's "input-independent baseline", as an experiment inside the normal run (``--recipe
input-independent``): at the first optimizer step the top-level model is called again on the first batch
it saw, in eval mode, and on two variants of its first tensor argument — all zeros (token id 0 for token
inputs), and the batch rolled by one sample. Measures ‖out(variant) − out(x)‖ / ‖out(x)‖. The script's
training is not disturbed (random state and train/eval flags restored).

- fail: every variant that differs from the input gives the same output (relative change below
  ``SAME_OUTPUT``): the model ignores its input — the input is overwritten or detached inside ``forward``,
  multiplied by a zero mask, or only a bias reaches the output.

Stays silent (skip) when the model is not called with a tensor argument before the first step, when the
output is not a floating-point tensor, and when no variant differs from the input (an all-zero batch of one).

Cost: two extra forward passes without gradient, once.

What to do: follow the input through ``forward`` (a ``torch.zeros_like(x)``, an overwritten variable, a
``detach`` or a mask that drops everything).
"""

from __future__ import annotations

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
