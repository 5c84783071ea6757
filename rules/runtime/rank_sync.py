"""rank-sync: after the observed steps, every data-parallel rank holds the same parameters."""

from __future__ import annotations

from typing import Any, Optional

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, require, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="rank-sync",
    code="DP122",
    summary="Data-parallel ranks hold identical parameters after the observed steps (fingerprints on sampled steps).",
    distributed=True,
)

#: Relative difference of a parameter's L2 or L1 norm between two ranks above which it differs. Identical tensors
#: give bit-identical norms (same kernels, same shapes); float32 rounding alone is about 1e-7.
SYNC_RTOL = 1e-6
#: Relative difference of a parameter's gradient norm between ranks above which the gradients were not averaged.
GRAD_RTOL = 1e-4
#: Parameters named in the summary.
SHOWN = 3


PAGE = Sections(
    why=f"""
        Data parallelism keeps one model on every rank and averages the gradients, so that every rank makes
        the same update and the copies stay identical. When the model is never wrapped in
        `DistributedDataParallel`, each rank trains its own copy on its own batches: the run looks normal, the
        loss falls on every rank, and at the end rank 0 saves a model that saw 1/N of the data while the other
        N-1 GPUs' work is thrown away. A rank that skips the all-reduce (`no_sync()` on some ranks only, a
        backward outside the DDP forward) or changes its weights on its own (a checkpoint loaded on rank 0
        after wrapping) does the same more quietly.

        In every rank the probe takes a fingerprint of each parameter of the optimizer — its L2 and L1 norm, two
        fused reductions on the device — before the first update and after every sampled step (steps 0, 1, 2
        and every `--sample-every`-th), read back with that step's one flush. No collective is added: each rank
        streams its fingerprints to the parent, and the parent compares them. It fails when a parameter differs
        between ranks (relative difference above {number(SYNC_RTOL)}) at the last step compared, and names
        the first parameters that differ and by how much, whether the ranks started from the same weights,
        whether their gradients were averaged (gradient norms differing by more than {number(GRAD_RTOL)}),
        and whether a DDP wrapper was seen. It warns when parameters differed on an earlier sampled step and
        agree again at the last (periodic averaging, or a late broadcast).

        What to do: wrap the model after moving it to its device, `model = DDP(model, device_ids=[local_rank])`,
        and call the wrapped model; let every rank run the same forward and backward; load checkpoints before
        wrapping (DDP broadcasts rank 0's weights when it is built).
    """,
    known_problems="""
        Compares the ranks this node runs (with `--nnodes` > 1, each node's probe sees its own ranks). With a
        DDP wrapper, ranks are compared within its process group (its data-parallel group); without one, all
        ranks are. Skipped when parameters are sharded (FSDP, DTensor parameters, DeepSpeed ZeRO-3) and when
        the ranks hold parameters of different names or shapes (pipeline or model parallelism). Tensor
        parallelism without a DDP wrapper whose shards have equal shapes reads as diverged. Buffers (batch norm
        statistics) are not compared: DDP broadcasts them at the start of each forward and every rank's forward
        then updates them with its own batch. Local SGD (weights averaged every k steps) fails when the last
        sampled step falls between two averagings. Two different tensors with equal L2 and L1 norms (a
        permutation) read as equal.
    """,
    bad="""
        dist.init_process_group("nccl")
        model = Net().to(device)            # never wrapped: every rank trains its own copy
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    """,
    good="""
        dist.init_process_group("nccl")
        model = DDP(Net().to(device), device_ids=[local_rank])
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    """,
)


def _rel(a: list[float], b: list[float]) -> float:
    """Largest relative difference between two fingerprints (scale: the larger magnitude of each pair)."""
    out = 0.0
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        scale = max(abs(x), abs(y))
        if scale > 0:
            out = max(out, abs(x - y) / scale)
    return out


def _groups(run: ProbeRun) -> list[list[int]]:
    """Ranks to compare: each DDP process group seen (its ranks present here), else every rank here."""
    here = set(run.ranks)
    groups = {tuple(sorted(r for r in rr.dist.get("ddp_ranks") or [] if r in here)) for rr in run.ranks.values()}
    groups = {g for g in groups if len(g) >= 2}
    return [list(g) for g in sorted(groups)] if groups else [sorted(here)]


def _fingerprints(run: ProbeRun, key: str) -> dict[int, dict[str, list[float]]]:
    return {s.step: getattr(s, key) for s in run.healthy_steps() if getattr(s, key)}


def _compare(runs: dict[int, ProbeRun], group: list[int]) -> dict[str, Any]:
    """Per common sampled step: the largest relative difference of each parameter between the group's ranks."""
    fps = {r: _fingerprints(runs[r], "param_fp") for r in group}
    common = sorted(set.intersection(*(set(f) for f in fps.values())))
    ref = group[0]
    if common:
        names = list(fps[ref][common[-1]])
        for r in group[1:]:
            if list(fps[r][common[-1]]) != names:
                raise Skip(f"ranks {ref} and {r} hold parameters of different names (model or pipeline parallel?): "
                           "nothing to compare", {"ranks": group})
    by_step = {}
    for step in common:
        by_step[step] = {name: max(_rel(fp, fps[r][step].get(name, [None, None])) for r in group[1:])
                         for name, fp in fps[ref][step].items()}
    init = {r: next(iter(_fingerprints(runs[r], "param_fp_init").values()), None) for r in group}
    init_diff: Optional[float] = None
    if all(init.values()):
        init_diff = max(_rel(fp, init[r].get(name, [None, None])) for r in group[1:]  # type: ignore[union-attr]
                        for name, fp in init[ref].items())  # type: ignore[union-attr]
    grads = {r: {s.step: s.param_grad_norms for s in runs[r].sampled_steps() if s.param_grad_norms} for r in group}
    gcommon = sorted(set.intersection(*(set(g) for g in grads.values())))
    grad_diff = None
    if gcommon:
        first = gcommon[0]
        grad_diff = max((_rel([v], [grads[r][first].get(name)]) for r in group[1:]
                         for name, v in grads[ref][first].items()), default=None)
    return {"common": common, "by_step": by_step, "init_diff": init_diff, "grad_diff": grad_diff,
            "grad_step": gcommon[0] if gcommon else None}


def evaluate(run: ProbeRun):
    runs = run.ranks
    require(len(runs) >= 2, "one rank on this node: nothing to compare across ranks")
    sharded = next((rr.dist.get("sharded") for rr in runs.values() if rr.dist.get("sharded")), "")
    if sharded:
        raise Skip(f"{sharded}: the ranks do not hold replicated parameters to compare", {"sharded": sharded})
    ddp = any(rr.dist.get("ddp") for rr in runs.values())
    wrappers = sorted({w for rr in runs.values() for w in rr.dist.get("wrappers") or []})
    worst: Optional[dict[str, Any]] = None
    compared: list[dict[str, Any]] = []
    for group in _groups(run):
        cmp = _compare(runs, group)
        if not cmp["common"]:
            continue
        last = cmp["common"][-1]
        differing = [(name, d) for name, d in cmp["by_step"][last].items() if d > SYNC_RTOL]
        earlier = next((s for s in cmp["common"] if any(d > SYNC_RTOL for d in cmp["by_step"][s].values())), None)
        entry = {"ranks": group, "steps": cmp["common"], "params": len(cmp["by_step"][last]), "last_step": last,
                 "differing": differing, "first_differing_step": earlier, "init_diff": cmp["init_diff"],
                 "grad_diff": cmp["grad_diff"], "grad_step": cmp["grad_step"],
                 "max_diff": max(cmp["by_step"][last].values(), default=0.0)}
        compared.append(entry)
        if worst is None or (len(differing), earlier is not None) > (len(worst["differing"]), worst["first_differing_step"] is not None):
            worst = entry
    if worst is None:
        raise Skip("no sampled step with parameter fingerprints on two ranks of a group: nothing to compare")
    evidence = {
        "groups": [e["ranks"] for e in compared], "steps_compared": worst["steps"], "params_compared": worst["params"],
        "differing": [{"name": n, "rel_diff": d} for n, d in worst["differing"][:10]],
        "differing_count": len(worst["differing"]), "first_differing_step": worst["first_differing_step"],
        "init_rel_diff": worst["init_diff"], "grad_rel_diff": worst["grad_diff"], "ddp": ddp, "wrappers": wrappers,
        "tolerance": SYNC_RTOL,
    }
    ranks_text = ", ".join(str(r) for r in worst["ranks"])
    if worst["differing"]:
        shown = ", ".join(f"{n} (off by {_pct(d)})" for n, d in worst["differing"][:SHOWN])
        more = f" ... {len(worst['differing'])} of {worst['params']} parameters" if len(worst["differing"]) > SHOWN \
            else f" ({len(worst['differing'])} of {worst['params']} parameters)"
        init = worst["init_diff"]
        if init is not None and init > SYNC_RTOL:
            start = "the ranks started from different weights (no common seed and no DDP broadcast)"
        elif init is not None:
            start = f"the ranks started from the same weights and differ from step {worst['first_differing_step']} on"
        else:
            start = f"first differed at step {worst['first_differing_step']}"
        gd = worst["grad_diff"]
        grads = (f"; their gradients differ by up to {_pct(gd)} at step {worst['grad_step']}: they are not averaged"
                 if gd is not None and gd > GRAD_RTOL else "")
        if not ddp:
            cause = (f"no DistributedDataParallel wrapper was seen (the model is a {', '.join(wrappers) or 'plain module'}): "
                     "each rank trains its own copy")
            advice = ("Wrap the model in DistributedDataParallel after moving it to its device "
                      "(model = DDP(model, device_ids=[local_rank])) and call the wrapped model in the loop.")
        else:
            cause = ("the model is wrapped in DDP, yet its copies diverge: a rank skipped the all-reduce (no_sync() or a "
                     "forward outside the wrapper on some ranks), or changed weights on its own")
            advice = ("Run the same forward/backward through the DDP wrapper on every rank, load checkpoints before "
                      "wrapping, and use the same optimizer settings on every rank.")
        summary = (f"parameters differ between ranks {ranks_text} at step {worst['last_step']}: {shown}{more}; "
                   f"{start}{grads}; {cause}")
        return result(CHECK, FAIL, summary, evidence, advice)
    if worst["first_differing_step"] is not None:
        return result(CHECK, WARN, f"parameters differed between ranks {ranks_text} at step {worst['first_differing_step']} "
                      f"but agree again at step {worst['last_step']} (periodic averaging or a late broadcast?)", evidence,
                      "Average gradients every step (DDP) unless the periodic averaging is intended.")
    return result(CHECK, PASS, f"{worst['params']} parameter(s) identical on ranks {ranks_text} at "
                  f"{len(worst['steps'])} sampled step(s) (largest difference {fmt(worst['max_diff'])})", evidence)


def _pct(x: float) -> str:
    return f"{x * 100:.2g}%"
