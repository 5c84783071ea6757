"""training-loop: did the script train at all, as far as the probe can see?

Measures: the number of ``optimizer.step()`` calls observed through PyTorch's global optimizer hooks.

Fails when none was observed: the script crashed or exited before its first step, never calls
``optimizer.step()`` (forgotten, or behind a flag that is off), or updates weights in a way the probe
cannot see (manual ``p.data -= lr * p.grad``, a framework with its own fused optimizer outside
``torch.optim``). Warns when the script ended by itself before the requested number of steps (a short
epoch, or an early ``break``) because the other checks then judge fewer steps.

What to do: make sure the training loop calls a ``torch.optim`` optimizer's ``step()``; if the script
needs arguments to start training, pass them after ``--``.
"""

from __future__ import annotations

from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, result, finding_at
from doctor.probe.trace import COMPLETED, CRASHED, TIMEOUT, ProbeRun

CHECK = RuntimeCheck(
    name="training-loop",
    code="DP101",
    summary="At least one optimizer step was observed: the script really trains through torch.optim.",
)


def evaluate(run: ProbeRun):
    n = run.steps_observed
    evidence = {"steps_observed": n, "steps_requested": run.steps_requested, "script_status": run.status,
                "other_optimizer_steps": run.other_optimizer_steps}
    if n == 0:
        err = run.error
        if run.status == CRASHED and err is not None:
            why = f"the script failed before its first optimizer step: {err.type}: {err.message}"
            findings = finding_at(CHECK, err.path, err.line, why)
        elif run.status == TIMEOUT:
            why = "no optimizer step before the timeout (hang, very slow start, or no training loop)"
            findings = []
        else:
            why = "the script ended without a single optimizer step"
            findings = []
        return result(CHECK, FAIL, why, evidence,
                      "Make sure the loop calls a torch.optim optimizer's step() (not a manual p.data update), "
                      "and pass the script's own arguments after `--`.", findings)
    if run.status == COMPLETED and n < run.steps_requested:
        return result(CHECK, WARN, f"the script finished after {n} of {run.steps_requested} steps; other checks judge fewer steps",
                      evidence, "Probe with a smaller --steps, or a longer run (more data or epochs).")
    return result(CHECK, PASS, f"{n} optimizer step(s) observed", evidence)
