"""data-sharding: the ranks of a data-parallel job train on different samples, and each epoch is shuffled anew."""

from __future__ import annotations

from itertools import combinations
from typing import Any, Optional

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, require, result
from doctor.probe.trace import FINGERPRINT_ELEMENTS, FINGERPRINT_TENSORS, ProbeRun

CHECK = RuntimeCheck(
    name="data-sharding",
    code="DP123",
    summary="Ranks train on different batches (fingerprints compared across ranks); a DistributedSampler's epoch changes between epochs.",
    distributed=True,
)

#: Sampled steps on which two ranks must have seen the same batch before the check fails (one equal pair could be
#: a coincidence of a tiny dataset; the default 20 steps compare 6).
MIN_STEPS = 2
#: Fingerprints closer than this (relative) are the same batch: identical data gives bit-identical sums.
SAME_RTOL = 1e-7


PAGE = Sections(
    why=f"""
        Data parallelism only pays when each rank trains on different samples. Without a `DistributedSampler`
        (or another per-rank split) every rank iterates the whole dataset; with the same seed on every rank it
        does so in the same order, so N GPUs compute N identical gradients and average them: the work of one
        GPU at N times the price, with nothing in the logs to show it. A `DistributedSampler` built with the
        wrong `rank` (the local rank on every node, or 0) does the same to some of the ranks.

        In every rank the probe fingerprints the first batch each sampled step takes from a `DataLoader`
        (the sum and the sum of squares of a strided subset of each tensor in it) and the input of the first
        model call of the step (for loops that build their batches themselves), and streams them to the
        parent; no collective is added. It fails when two ranks saw the same batch on every compared sampled
        step (at least {number(MIN_STEPS)}), and says why: no `DistributedSampler`, one with the same `rank` on
        both ranks, or random batches drawn with the same seed. A single equal step is a warning.

        It also watches each `DistributedSampler` as it starts an epoch: it shuffles with `seed + epoch`, and
        the epoch only changes through `sampler.set_epoch(epoch)`. When a shuffling sampler starts two or more
        epochs with the same epoch, every epoch repeats the first one's order; the check warns (within the
        probed steps this needs a short epoch; the static rule `sampler-missing-set-epoch` finds it in the
        source, and `--with-static` links the two).

        What to do: `DistributedSampler(dataset)` in the training `DataLoader` (it reads the rank and world size
        from the process group), `sampler.set_epoch(epoch)` before each epoch, and a seed per rank for
        anything drawn at random in the loop (`torch.manual_seed(seed + rank)`).
    """,
    known_problems=f"""
        Compares the ranks this node runs. The fingerprint covers the first {number(FINGERPRINT_TENSORS)} tensors of the
        step's first batch (a strided subset of at most {number(FINGERPRINT_ELEMENTS)} elements each); two batches that differ only between the
        sampled elements read as equal. A batch that holds no tensor (strings, custom objects) is not
        fingerprinted; the model input then stands in, and a model whose first input is a constant (a
        timestep, a fixed prompt) while the real data differs is read as identical data when no DataLoader is
        used. Ranks that see different samples of an unsharded dataset (no sampler, different seeds) pass:
        each epoch then holds the dataset N times, which the check does not judge. The epoch warning needs two
        epochs within the probed steps, and only sees samplers that are `DistributedSampler`s (or subclasses
        that do not override `__iter__`).
    """,
    bad="""
        torch.manual_seed(0)                       # the same seed on every rank
        loader = DataLoader(train_set, batch_size=64, shuffle=True)
        for epoch in range(epochs):
            for x, y in loader:                    # every rank gets the same batches
                ...
    """,
    good="""
        torch.manual_seed(0)
        sampler = DistributedSampler(train_set)    # each rank gets its 1/N of every epoch
        loader = DataLoader(train_set, batch_size=64, sampler=sampler)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)               # a new order every epoch
            for x, y in loader:
                ...
    """,
)


def _same(a: list[float], b: list[float]) -> bool:
    if len(a) != len(b):
        return False
    return all(abs(x - y) <= SAME_RTOL * max(abs(x), abs(y)) for x, y in zip(a, b) if x is not None and y is not None)


def _fingerprints(run: ProbeRun, key: str) -> dict[int, list[float]]:
    return {s.step: getattr(s, key) for s in run.steps if getattr(s, key)}


def _stuck_samplers(run: ProbeRun) -> list[dict[str, Any]]:
    """Shuffling DistributedSamplers that started two or more epochs, always with the same epoch."""
    by_index: dict[Any, list[dict[str, Any]]] = {}
    for ev in run.samplers:
        by_index.setdefault(ev.get("index"), []).append(ev)
    stuck = []
    for evs in by_index.values():
        epochs = [e.get("epoch") for e in evs]
        if len(evs) >= 2 and evs[0].get("shuffle") and len(set(epochs)) == 1:
            stuck.append({"class": evs[0].get("cls"), "epochs_started": len(evs), "epoch": epochs[0],
                          "at_steps": [e.get("step") for e in evs]})
    return stuck


def _cause(run: ProbeRun, pair: tuple[int, int], source: str) -> str:
    """Why two ranks see the same batches, from what their samplers said."""
    a, b = (run.ranks[r] for r in pair)
    sa, sb = a.samplers, b.samplers
    if source == "input_fp" and not any(s.batches for s in a.steps):
        return ("the batches are built in the loop (no DataLoader) and are identical: random data drawn with the same "
                "seed on every rank?")
    if not sa and not sb:
        return "no DistributedSampler: every rank iterates the whole dataset, in the same order (same seed)"
    if sa and sb:
        ra, rb = sa[0].get("rank"), sb[0].get("rank")
        if ra is not None and ra == rb:
            return f"their DistributedSamplers both have rank={ra}: pass each process its own rank (or leave the default)"
        if sa[0].get("num_replicas") == 1:
            return "the DistributedSampler has num_replicas=1: every rank takes the whole dataset"
    return "their samplers give them the same samples"


def evaluate(run: ProbeRun):
    runs = run.ranks
    require(len(runs) >= 2, "one rank on this node: nothing to compare across ranks")
    stuck = {r: _stuck_samplers(rr) for r, rr in runs.items()}
    stuck = {r: s for r, s in stuck.items() if s}
    source = "batch_fp" if all(_fingerprints(rr, "batch_fp") for rr in runs.values()) else "input_fp"
    fps = {r: _fingerprints(rr, source) for r, rr in runs.items()}
    fps = {r: f for r, f in fps.items() if f}
    samplers = sorted({str(e.get("cls")) for rr in runs.values() for e in rr.samplers})
    evidence: dict[str, Any] = {"source": "DataLoader batches" if source == "batch_fp" else "model inputs",
                                "samplers": samplers, "epoch_never_set": stuck}
    identical: list[tuple[int, int]] = []
    steps: list[int] = []
    if len(fps) >= 2:
        common = sorted(set.intersection(*(set(f) for f in fps.values())))
        steps = common
        for a, b in combinations(sorted(fps), 2):
            if common and all(_same(fps[a][s], fps[b][s]) for s in common):
                identical.append((a, b))
    evidence.update(steps_compared=steps, identical_pairs=[list(p) for p in identical])
    if identical and len(steps) >= MIN_STEPS:
        all_same = len(identical) == len(fps) * (len(fps) - 1) // 2
        who = f"all {len(fps)} ranks" if all_same else "ranks " + "; ".join(f"{a} and {b}" for a, b in identical)
        cause = _cause(run, identical[0], source)
        return result(CHECK, FAIL, f"{who} train on identical batches ({len(steps)} sampled steps compared, "
                      f"{evidence['source']}): {cause}", evidence,
                      "Give every rank its own share of the data: DistributedSampler(dataset) in the training "
                      "DataLoader with sampler.set_epoch(epoch) each epoch, and a seed per rank for random batches.")
    stuck_text = _stuck_text(stuck)
    if identical:
        return result(CHECK, WARN, f"ranks {identical[0][0]} and {identical[0][1]} saw the same batch at the only "
                      f"compared step {steps[0]}" + (f"; {stuck_text}" if stuck_text else ""), evidence,
                      "Probe more --steps to compare more batches.")
    if stuck_text:
        return result(CHECK, WARN, stuck_text, evidence,
                      "Call sampler.set_epoch(epoch) at the start of every epoch, before iterating the DataLoader.")
    if not steps:
        raise Skip("no sampled step with a batch fingerprint on two ranks: nothing to compare", evidence)
    epochs = sorted({e.get("epoch") for rr in runs.values() for e in rr.samplers if e.get("epoch") is not None})
    how = (f"{samplers[0]}, epochs {epochs[0]}..{epochs[-1]}" if samplers and len(epochs) > 1
           else samplers[0] if samplers else "no DistributedSampler seen")
    return result(CHECK, PASS, f"batches differ across {len(fps)} ranks at {len(steps)} sampled step(s) ({how})", evidence)


def _stuck_text(stuck: dict[int, list[dict[str, Any]]]) -> Optional[str]:
    if not stuck:
        return None
    r, entries = next(iter(sorted(stuck.items())))
    e = entries[0]
    ranks = ", ".join(str(x) for x in sorted(stuck))
    return (f"a {e['class']} started {e['epochs_started']} epochs with epoch={e['epoch']} each time (rank {ranks}): "
            "set_epoch() is never called, so every epoch repeats the same order")
