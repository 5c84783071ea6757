"""training-loop: did the script train at all, as far as the probe can see?"""

from __future__ import annotations

from doctor.core.page import Sections
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, result, finding_at
from doctor.probe.trace import COMPLETED, CRASHED, TIMEOUT, ProbeRun

CHECK = RuntimeCheck(
    name="training-loop",
    code="DP101",
    summary="At least one optimizer step was observed: the script really trains through torch.optim.",
)


PAGE = Sections(
    why="""
        Every other check judges what happens around `optimizer.step()`: when none was observed, the script
        did not train under the probe, and nothing else can be said. The probe counts the steps of
        `torch.optim` optimizers through PyTorch's global optimizer hooks. It fails when none was observed:
        the script crashed or exited before its first step (the failing line is shown), never calls
        `optimizer.step()` (forgotten, or behind a flag that is off), or hung until the timeout. It warns
        when the script ended by itself before the requested number of steps (a short epoch, an early
        `break`), because the other checks then judge fewer steps.

        What to do: make sure the training loop calls a `torch.optim` optimizer's `step()`; if the script
        needs arguments to start training, pass them after `--`.
    """,
    known_problems="""
        Only `torch.optim` optimizers are seen: weights updated by hand (`p.data -= lr * p.grad`), or by a
        framework's fused optimizer outside `torch.optim`, read as "no optimizer step" although the script
        trains.
    """,
    bad="""
        for x, y in loader:
            model.zero_grad()
            loss_fn(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    """,
    good="""
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    """,
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
