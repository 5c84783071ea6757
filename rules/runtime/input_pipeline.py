"""input-pipeline: how much of each step is spent waiting for the next batch."""

from __future__ import annotations

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="input-pipeline",
    code="DP110",
    summary="The training step does not idle waiting for data (DataLoader wait share of step time).",
)

#: A quarter of every step spent waiting: a data pipeline fix buys up to 1.3x throughput.
WARN_FRACTION = 0.25
#: Half of every step waiting: the model computes at most half the time.
FAIL_FRACTION = 0.5


PAGE = Sections(
    why=f"""
        On GPU, time the host spends waiting for the next batch is time the accelerator idles once its
        queue has drained. The check measures the host time spent in `DataLoader` iterators' `__next__`
        between two optimizer steps, against the wall time of the step (from one `optimizer.step()` to the
        next), leaving out the first step (worker start-up, cuDNN autotuning, lazy initialisation). It warns
        when more than {number(WARN_FRACTION * 100)}% of step time is spent waiting and fails above
        {number(FAIL_FRACTION * 100)}%.

        What to do: `num_workers` > 0 (about the number of cores), `pin_memory=True` with `non_blocking=True`
        copies, `persistent_workers=True`, `prefetch_factor`; move decoding and augmentation off the
        critical path, pre-tokenise, cache decoded data.
    """,
    known_problems="""
        Skipped when the script does not iterate a `torch.utils.data.DataLoader` (batches built in the loop)
        and when fewer than two steps ran. On CPU the model's compute is slow, so the share of waiting reads
        lower than it would on a GPU. Waiting outside the loader's `__next__` (a `.to(device)` copy that
        blocks, data read in the loop body) is not counted.
    """,
    bad="""
        loader = DataLoader(ImageFolder(root, transform=heavy_augment), batch_size=64)
    """,
    good="""
        loader = DataLoader(ImageFolder(root, transform=heavy_augment), batch_size=64,
                            num_workers=8, pin_memory=True, persistent_workers=True)
    """,
)


def evaluate(run: ProbeRun):
    steps = [s for s in run.steps[1:] if s.wall_s]
    if not any(s.batches for s in run.steps):
        raise Skip("no DataLoader seen (batches built in the loop): nothing to measure")
    if not steps:
        raise Skip("need at least two steps to leave out start-up")
    wait = sum(s.data_wait_s for s in steps)
    wall = sum(s.wall_s for s in steps)
    frac = wait / wall if wall else 0.0
    evidence = {"data_wait_s": wait, "step_time_s": wall, "wait_fraction": frac, "steps": len(steps),
                "mean_step_ms": 1000 * wall / len(steps), "mean_wait_ms": 1000 * wait / len(steps)}
    head = f"{frac:.0%} of step time waiting for data ({evidence['mean_wait_ms']:.1f} of {evidence['mean_step_ms']:.1f} ms per step)"
    advice = ("Use DataLoader(num_workers>0, pin_memory=True, persistent_workers=True) and move decoding/augmentation "
              "off the training loop.")
    if frac > FAIL_FRACTION:
        return result(CHECK, FAIL, head, evidence, advice)
    if frac > WARN_FRACTION:
        return result(CHECK, WARN, head, evidence, advice)
    return result(CHECK, PASS, head, evidence)
