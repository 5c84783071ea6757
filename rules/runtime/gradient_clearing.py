"""gradient-clearing: gradients are cleared once per step — after the optimizer step, before the next backward."""

from __future__ import annotations

from doctor.core.page import Sections
from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="gradient-clearing",
    code="DP114",
    summary="Gradients are cleared once per step: not left to add up, not cleared between backward() and step().",
)

#: Backward passes per step whose gradient norms the probe records (doctor.probe.hooks.WINDOW_BACKWARDS).
INSPECTED = 4
#: Judged steps needed before calling it: one step could be a deliberate skip.
MIN_JUDGED = 2


PAGE = Sections(
    why=f"""
        `backward()` adds to `.grad`. Never cleared, every step applies the sum of all gradients so far: the
        update grows step by step and the loss soon diverges. Cleared between `backward()` and `step()`, the
        optimizer sees no gradient at all and the weights do not move (apart from weight decay) — and a
        gradient-flow report would blame unused layers. On sampled steps after the first, the probe reads the
        global gradient norm of the primary optimizer's parameters just before and just after each of the
        first {INSPECTED} `backward()` calls of the step, and at `optimizer.step()`. It fails "never cleared" when,
        on every judged step (at least {MIN_JUDGED}), the gradients before every inspected backward pass still hold
        the previous step's values, and "cleared between backward and step" when backward produced gradients
        but at the step they are gone (None or all zero) on every judged step.

        What to do: call `optimizer.zero_grad()` once per step, after `optimizer.step()` (or at the top of the
        iteration, before the forward pass) — never between `backward()` and `step()`.
    """,
    known_problems=f"""
        Skips on the first step (nothing to clear yet), on closure optimizers (LBFGS), on scripts that update
        weights by hand, and on steps with more than {INSPECTED} backward passes where none of the inspected ones
        started from cleared gradients. Clearing with `set_to_none` or with zeros, through the optimizer or the
        model, all count; a script that clears only some parameters is judged on all of the optimizer's.
    """,
    bad="""
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()                   # zero_grad() missing
    """,
    good="""
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    """,
)


def evaluate(run: ProbeRun):
    if run.manual_updates:
        raise Skip("the script updates weights by hand: no optimizer step to relate the clearing to")
    steps = [s for s in run.sampled_steps() if s.step >= 1 and s.grad_after_backward and s.closure_evaluations is None]
    if len(steps) < MIN_JUDGED:
        raise Skip("fewer than two sampled steps with backward passes to judge")
    # backward produced a gradient, and at the step there is none (all None: grad_norm unset) or only zeros
    cleared_between = [s for s in steps if any((g or 0) > 0 for g in s.grad_after_backward) and not s.grad_norm]
    norms = [s.grad_norm for s in steps]
    evidence = {"steps": [s.step for s in steps], "grad_before_backward": [s.grad_before_backward for s in steps],
                "grad_after_backward": [s.grad_after_backward for s in steps], "grad_norm_at_step": norms}
    li = run.loss_info
    if len(cleared_between) == len(steps):
        after = max(g for s in steps for g in s.grad_after_backward if g)
        msg = (f"gradients are cleared between backward() and optimizer.step(): backward produced them (norm up to "
               f"{fmt(after)}) but at the step they are gone on all {len(steps)} judged steps, so the weights never move")
        return result(CHECK, FAIL, msg, evidence,
                      "Move zero_grad() before the forward pass (or after optimizer.step()), never between backward() and step().",
                      CHECK.finding(li.get("path"), li.get("line"), msg, evidence=evidence))
    judged = [s for s in steps if s.grad_before_backward and all(v is not None for v in s.grad_before_backward)
              and (s.backwards <= INSPECTED or any(v == 0 for v in s.grad_before_backward))]
    if len(judged) < MIN_JUDGED:
        raise Skip("fewer than two sampled steps whose backward passes could all be inspected", evidence)
    stale = [s for s in judged if all(v > 0 for v in s.grad_before_backward)]
    if len(stale) == len(judged):
        first = [n for n in norms if n]
        growth = f"; the gradient norm at the step went {fmt(first[0])} -> {fmt(first[-1])}" if len(first) >= 2 else ""
        msg = (f"gradients are never cleared: before the first backward() of each of {len(judged)} judged steps they "
               f"still hold the previous steps' values (norm {fmt(judged[0].grad_before_backward[0])}), so every step "
               f"applies the sum of all gradients so far{growth}")
        return result(CHECK, FAIL, msg, evidence,
                      "Call optimizer.zero_grad() once per step (after optimizer.step(), or before the forward pass).",
                      CHECK.finding(li.get("path"), li.get("line"), msg, evidence=evidence))
    return result(CHECK, PASS, f"gradients cleared before backward and present at the step ({len(judged)} steps judged)",
                  evidence)
