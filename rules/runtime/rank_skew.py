"""rank-skew: no rank holds the others up (step time, data wait), and no rank is short of GPU memory."""

from __future__ import annotations

from typing import Any

from doctor.core.page import Sections, number
from doctor.probe.checks import PASS, WARN, RuntimeCheck, median, require, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="rank-skew",
    code="DP124",
    summary="No straggler rank: step-time and data-wait skew between ranks, and per-rank GPU memory headroom.",
    distributed=True,
)

#: Steps after the first (start-up, lazy initialisation) every rank needs before times are compared.
MIN_STEPS = 3
#: The slowest rank's median step time over the fastest's: beyond 1.5x, one rank does half again the work.
STEP_SKEW_WARN = 1.5
#: Differences in median step time below this many seconds are scheduling noise, not a straggler.
MIN_GAP_S = 0.01
#: Difference between two ranks' shares of step time spent waiting for data: beyond 0.2 (20 points of every
#: step) one rank's input pipeline holds the job up.
DATA_WAIT_SKEW_WARN = 0.2
#: Peak reserved GPU memory of the fullest rank over the emptiest's, and the least difference in bytes, beyond
#: which one rank carries extra (logging, evaluation or checkpoints on rank 0; an unbalanced split).
MEMORY_SKEW_WARN = 1.5
MEMORY_SKEW_MIN_GIB = 1.0
#: A rank with less free GPU memory than this share of its device is the one that will run out first.
HEADROOM_WARN = 0.10
GIB = 1024**3


PAGE = Sections(
    why=f"""
        A data-parallel job runs at the pace of its slowest rank: every all-reduce waits for all of them. One
        rank whose loader is starved (a slow disk, fewer workers, a heavier shard), that does extra work (logging,
        evaluation or checkpointing on rank 0 inside the loop), or that sits on a throttled or shared GPU makes
        every GPU wait; one rank that holds more memory is the one that runs out. Nothing reports it: the loss
        curve is the same, only slower.

        From each rank's own step records (no collective), after the first step: the median time per optimizer
        step, and the share of step time spent in `DataLoader.__next__`. It warns when the slowest rank's median
        step is more than {number(STEP_SKEW_WARN)}x the fastest's (and at least {number(MIN_GAP_S * 1000)} ms
        longer), and when one rank waits for data for {number(DATA_WAIT_SKEW_WARN * 100)} points more of its step
        time than another (and at least {number(MIN_GAP_S * 1000)} ms more per step) — under DDP the ranks' step times match (the fast ones wait in the all-reduce), so the
        data wait is what names the straggler. On GPU it compares each rank's peak reserved memory and
        headroom: it warns when one rank peaks at more than {number(MEMORY_SKEW_WARN)}x another (and at least
        {number(MEMORY_SKEW_MIN_GIB)} GiB more) and when a rank has less than {number(HEADROOM_WARN * 100)}% of its
        device free. A performance finding: it warns, never fails.

        What to do: give the waiting rank's loader more `num_workers` (or balance the shards); move rank-0 extras
        out of the step or make them asynchronous; check the slow rank's GPU (`nvidia-smi`: clocks, other
        processes).
    """,
    known_problems=f"""
        Compares the ranks this node runs, with at least {number(MIN_STEPS)} steps each after the first. Under DDP
        a rank that is slow in compute (not in data) shows as equal step times on every rank; the check does not
        time the collective itself. On a CPU box the ranks share the cores, so step-time differences there are
        partly the scheduler's. GPU memory is read from `torch.cuda` per step (and NVML on sampled steps); ranks
        sharing one GPU are not told apart.
    """,
    bad="""
        loader = DataLoader(shard_for(rank), batch_size=64, num_workers=2 if rank == 0 else 0)
    """,
    good="""
        loader = DataLoader(shard_for(rank), batch_size=64, num_workers=4, pin_memory=True,
                            persistent_workers=True)
    """,
)


def _timing(run: ProbeRun) -> dict[str, Any]:
    steps = [s for s in run.healthy_steps()[1:] if s.wall_s]
    wall = sum(s.wall_s or 0.0 for s in steps)
    wait = sum(s.data_wait_s for s in steps)
    return {"steps": len(steps), "median_step_s": median([s.wall_s for s in steps]),
            "data_wait_share": wait / wall if wall else 0.0, "data_wait_per_step_s": wait / len(steps) if steps else 0.0,
            "loader": any(s.batches for s in steps)}


def _memory(run: ProbeRun) -> dict[str, Any]:
    mems = [s.memory for s in run.steps if s.memory]
    if not run.on_cuda or not mems:
        return {}
    total = float(run.device.get("total_bytes") or max(m.get("nvml_total", 0.0) for m in mems))
    peak = max(m.get("peak_reserved", 0.0) for m in mems)
    others = max((m.get("nvml_others", 0.0) for m in mems), default=0.0)
    return {"peak_reserved_gib": round(peak / GIB, 3), "total_gib": round(total / GIB, 3),
            "headroom_fraction": (total - others - peak) / total if total else None}


def evaluate(run: ProbeRun):
    runs = run.ranks
    require(len(runs) >= 2, "one rank on this node: nothing to compare across ranks")
    timing = {r: _timing(rr) for r, rr in runs.items()}
    timed = {r: t for r, t in timing.items() if t["steps"] >= MIN_STEPS and t["median_step_s"]}
    require(len(timed) >= 2, f"fewer than two ranks with {MIN_STEPS} steps after the first: nothing to compare")
    memory = {r: m for r, m in ((r, _memory(rr)) for r, rr in runs.items()) if m}
    evidence: dict[str, Any] = {"per_rank": {str(r): {**timing[r], **memory.get(r, {})} for r in runs}}
    notes: list[str] = []

    slow = max(timed, key=lambda r: timed[r]["median_step_s"])
    fast = min(timed, key=lambda r: timed[r]["median_step_s"])
    t_slow, t_fast = timed[slow]["median_step_s"], timed[fast]["median_step_s"]
    skew = t_slow / t_fast if t_fast else 1.0
    evidence.update(step_skew=skew, slowest_rank=slow, fastest_rank=fast)
    if skew > STEP_SKEW_WARN and t_slow - t_fast >= MIN_GAP_S:
        notes.append(f"rank {slow} takes {t_slow * 1000:.1f} ms per step vs {t_fast * 1000:.1f} ms on rank {fast} "
                     f"({skew:.2f}x): a straggler")
    if any(t["loader"] for t in timed.values()):
        waiter = max(timed, key=lambda r: timed[r]["data_wait_share"])
        least = min(timed, key=lambda r: timed[r]["data_wait_share"])
        gap = timed[waiter]["data_wait_share"] - timed[least]["data_wait_share"]
        gap_s = timed[waiter]["data_wait_per_step_s"] - timed[least]["data_wait_per_step_s"]
        evidence.update(data_wait_gap=gap, most_waiting_rank=waiter)
        if gap > DATA_WAIT_SKEW_WARN and gap_s >= MIN_GAP_S:
            notes.append(f"rank {waiter} waits for data {timed[waiter]['data_wait_share']:.0%} of its step time vs "
                         f"{timed[least]['data_wait_share']:.0%} on rank {least}: its input pipeline holds every rank back")
    if len(memory) >= 2:
        full = max(memory, key=lambda r: memory[r]["peak_reserved_gib"])
        empty = min(memory, key=lambda r: memory[r]["peak_reserved_gib"])
        hi, lo = memory[full]["peak_reserved_gib"], memory[empty]["peak_reserved_gib"]
        if lo and hi / lo > MEMORY_SKEW_WARN and hi - lo >= MEMORY_SKEW_MIN_GIB:
            notes.append(f"rank {full} peaks at {hi:.1f} GiB of GPU memory vs {lo:.1f} GiB on rank {empty} "
                         f"({hi / lo:.1f}x): it carries extra work")
    for r, m in sorted(memory.items()):
        frac = m.get("headroom_fraction")
        if frac is not None and frac < HEADROOM_WARN:
            notes.append(f"rank {r} has {frac:.0%} of its GPU memory free: it runs out first")
    lo_ms, hi_ms = t_fast * 1000, t_slow * 1000
    waits = [t["data_wait_share"] for t in timed.values()]
    head = (f"median step {lo_ms:.1f}-{hi_ms:.1f} ms across {len(timed)} ranks ({skew:.2f}x)"
            + (f", data wait {min(waits):.0%}-{max(waits):.0%} of step time" if any(t["loader"] for t in timed.values()) else ""))
    if memory:
        fr = [m["headroom_fraction"] for m in memory.values() if m.get("headroom_fraction") is not None]
        if fr:
            head += f", GPU headroom {min(fr):.0%}-{max(fr):.0%}"
    if notes:
        return result(CHECK, WARN, "; ".join(notes), evidence,
                      "Balance the ranks: more loader workers where a rank waits for data, rank-0 extras out of the step, "
                      "check the slow rank's device.")
    return result(CHECK, PASS, head, evidence)
