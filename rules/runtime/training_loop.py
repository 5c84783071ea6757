"""training-loop: did the script train at all, as far as the probe can see?"""

from __future__ import annotations

import sys
from typing import Optional

from doctor.core.page import Sections
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, finding_at, result
from doctor.probe.trace import COMPLETED, CRASHED, TIMEOUT, ProbeRun, ScriptError

CHECK = RuntimeCheck(
    name="training-loop",
    code="DP101",
    summary="At least one optimizer step was observed: the script really trains through torch.optim.",
    needs_steps=False,  # it is the check that says so
)


PAGE = Sections(
    why="""
        Every other check judges what happens around `optimizer.step()`: when none was observed, the script
        did not train under the probe, and nothing else can be said. The probe counts the steps of
        `torch.optim` optimizers through PyTorch's global optimizer hooks; weights updated by hand after
        `backward()` (`p.data.add_(p.grad, alpha=-lr)`, as pytorch/examples' word_language_model does) count
        too, once the parameters are seen to change between backward passes. It fails when no step was
        observed: the script crashed or exited before its first step (the failing line is shown), never
        updates the weights (`optimizer.step()` forgotten, or behind a flag that is off), or hung until the
        timeout — and when it crashed or timed out *after* some steps (the other checks then judge only
        those). The advice follows the error: a missing module, a checkpoint `torch.load` cannot read, a
        missing file, a non-zero exit. It warns when the script ended by itself before the requested number
        of steps (a short epoch, an early `break`), because the other checks then judge fewer steps.

        What to do: make sure the training loop calls a `torch.optim` optimizer's `step()`; if the script
        needs arguments to start training, pass them after `--`.
    """,
    known_problems="""
        A framework's fused optimizer outside `torch.optim` that does not run `backward()` through
        `torch.autograd.backward` reads as "no optimizer step" although the script trains. Hand-written updates
        are recognised from the second backward pass on (the first step is counted late), and without an
        optimizer there is no LR to report.
    """,
    bad="""
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            # optimizer.step() forgotten: the weights never change
    """,
    good="""
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    """,
)


def _advice(err: Optional[ScriptError]) -> str:
    """What to do about the error that ended the script, in the user's terms."""
    if err is None:
        return ("Make sure the loop calls a torch.optim optimizer's step() (or updates the weights after backward()), "
                "and pass the script's own arguments after `--`.")
    text = f"{err.type}: {err.message} " + " ".join(err.traceback)
    if err.type in ("ModuleNotFoundError", "ImportError"):
        missing = err.message.split("'")[1] if err.message.count("'") >= 2 else "the missing module"
        return (f"Install {missing} in the environment doctor runs in ({sys.executable}): the probe runs the script "
                "with the same Python interpreter.")
    if "torch/serialization.py" in text or "weights_only" in text or err.type == "UnpicklingError":
        return ("The checkpoint or data file could not be loaded by torch.load: check its path, that torch.save wrote "
                "it, and for files holding more than tensors pass weights_only=False (only for files you trust; "
                "the default is weights_only=True since PyTorch 2.6).")
    if err.type in ("FileNotFoundError", "IsADirectoryError", "NotADirectoryError"):
        return ("A file the script reads is missing: the probe runs it in your current directory, so run doctor from "
                "where the script expects to be run, or pass the path after `--`.")
    if err.oom:
        return "Out of memory: see memory-headroom for the batch size to try."
    if err.type == "SystemExit":
        return "The script exited with an error status: pass the arguments it needs after `--`."
    if err.type == "SyntaxError":
        return "Fix the syntax error at the line shown."
    if err.type.startswith("SIG"):
        return "The process was killed: see the script's last output; a SIGKILL often means host memory ran out."
    return "Fix the error at the line shown (the traceback is in the report); the other checks judge only the steps before it."


def evaluate(run: ProbeRun):
    n = run.steps_observed
    evidence = {"steps_observed": n, "steps_requested": run.steps_requested, "script_status": run.status,
                "other_optimizer_steps": run.other_optimizer_steps, "manual_updates": run.manual_updates}
    err = run.error
    if n == 0:
        if run.status == CRASHED and err is not None:
            why = f"the script failed before its first optimizer step: {err.type}: {err.message}"
            findings = finding_at(CHECK, err.path, err.line, why)
        elif run.status == TIMEOUT:
            why = "no optimizer step before the timeout (hang, very slow start, or no training loop)"
            findings = []
        else:
            why = "the script ended without a single optimizer step (nor a backward() followed by a weight change)"
            findings = []
        return result(CHECK, FAIL, why, evidence, _advice(err if run.status == CRASHED else None), findings)
    how = " (weights updated by hand after backward(), no torch.optim optimizer)" if run.manual_updates else ""
    if run.status == CRASHED:
        detail = f": {err.type}: {err.message}" if err else ""
        why = f"the script crashed after {n} optimizer step(s){how}{detail}; the other checks judge only those steps"
        findings = finding_at(CHECK, err.path, err.line, why) if err else []
        return result(CHECK, FAIL, why, evidence, _advice(err), findings)
    if run.status == TIMEOUT:
        return result(CHECK, FAIL, f"the script timed out after {n} of {run.steps_requested} optimizer step(s){how}",
                      evidence, "Raise --timeout, or probe fewer --steps; a hang shows in the script's last output.")
    if run.status == COMPLETED and n < run.steps_requested:
        return result(CHECK, WARN, f"the script finished after {n} of {run.steps_requested} steps{how}; other checks judge fewer steps",
                      evidence, "Probe with a smaller --steps, or a longer run (more data or epochs).")
    return result(CHECK, PASS, f"{n} optimizer step(s) observed{how}", evidence)
