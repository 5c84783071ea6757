"""memory-headroom: GPU memory used by the script versus what the device has."""

from __future__ import annotations

import math

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, finding_at, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="memory-headroom",
    code="DP109",
    summary="On GPU, peak memory leaves headroom on the device; on OOM, where and which batch size to try.",
    needs_steps=False,  # an OOM before the first step is still judged
)

GIB = 1024**3
#: Under 3% free, allocator fragmentation or one longer batch is enough to OOM.
FAIL_FRACTION = 0.03
#: Under 10% free, variable-size batches (sequence lengths, last batch) are at risk.
WARN_FRACTION = 0.10
#: Target use of the free memory when suggesting a batch size (the allocator needs slack).
FILL = 0.9


PAGE = Sections(
    why=f"""
        A run that fits with a few percent to spare crashes later, on the longest sequence or the last odd
        batch, hours in. On GPU the check reads `torch.cuda` statistics after every step and NVML on sampled
        steps (when nvidia-ml-py is installed): the script's peak allocated and reserved bytes, the device
        total, and what other processes hold. Headroom is the total minus other processes minus the peak
        reserved. It fails below {number(FAIL_FRACTION * 100)}% headroom (fragmentation or one longer batch is an
        out-of-memory error) and warns below {number(WARN_FRACTION * 100)}%. It also estimates the largest batch size
        that fits, linearly: memory after a step (weights, gradients, optimizer state) is the fixed part,
        (peak allocated − fixed) / batch size the per-sample part, filling {number(FILL * 100)}% of the free memory.
        On a CUDA out-of-memory crash it fails, points at the line and suggests a batch size.

        What to do: lower the batch size (or use gradient accumulation), enable activation checkpointing or
        bf16 autocast; when headroom is large, the estimate says how far the batch can grow.
    """,
    known_problems="""
        Skipped on CPU: host memory is not judged. Without nvidia-ml-py other processes' memory is not
        counted. The batch-size estimate assumes memory grows linearly with the batch, which sequence
        models with variable lengths and attention do not follow.
    """,
    bad="""
        loader = DataLoader(train_set, batch_size=512)   # peak memory 97% of the GPU
    """,
    good="""
        loader = DataLoader(train_set, batch_size=256)   # or keep 512 with gradient accumulation
    """,
)


def _gib(x: float) -> float:
    return round(x / GIB, 3)


def evaluate(run: ProbeRun):
    err = run.error
    mems = [s.memory for s in run.steps if s.memory]
    bs = next((s.batch_size for s in run.steps if s.batch_size), None)
    if err is not None and err.oom:
        evidence = {"error": err.message, "batch_size": bs}
        suggest = max(1, bs // 2) if bs else None
        if mems and bs and run.device.get("total_bytes"):
            peak = max(m.get("peak_allocated", 0) for m in mems)
            if peak:
                suggest = max(1, int(bs * run.device["total_bytes"] * FILL / peak * 0.5))
        evidence["suggested_batch_size"] = suggest
        where = f" at {err.path}:{err.line}" if err.line else ""
        tip = f"; try batch size {suggest}" if suggest else ""
        return result(CHECK, FAIL, f"out of memory{where}{tip}", evidence,
                      "Lower the batch size or use gradient accumulation, activation checkpointing, bf16 autocast.",
                      finding_at(CHECK, err.path, err.line, f"CUDA out of memory{tip}", evidence=evidence))
    if not run.on_cuda:
        raise Skip("the script ran on CPU: GPU memory headroom does not apply", {"device": run.device.get("type", "unknown")})
    if not mems:
        raise Skip("no CUDA memory statistics recorded")
    total = float(run.device.get("total_bytes") or max(m.get("nvml_total", 0) for m in mems))
    peak_alloc = max(m.get("peak_allocated", 0.0) for m in mems)
    peak_res = max(m.get("peak_reserved", 0.0) for m in mems)
    others = max((m.get("nvml_others", 0.0) for m in mems), default=0.0)
    fixed = mems[-1].get("allocated", 0.0)
    headroom = total - others - peak_res
    frac = headroom / total if total else 0.0
    evidence = {
        "total_gib": _gib(total), "peak_allocated_gib": _gib(peak_alloc), "peak_reserved_gib": _gib(peak_res),
        "other_processes_gib": _gib(others), "headroom_gib": _gib(headroom), "headroom_fraction": frac,
        "fixed_gib": _gib(fixed), "batch_size": bs, "nvml": bool(run.device.get("nvml")),
        "nvml_used_gib": _gib(max((m.get("nvml_used", 0.0) for m in mems), default=0.0)),
    }
    if bs and peak_alloc > fixed:
        per_sample = (peak_alloc - fixed) / bs
        evidence["per_sample_gib"] = _gib(per_sample)
        evidence["max_batch_size_estimate"] = max(0, int(math.floor(((total - others) * FILL - fixed) / per_sample)))
    head = f"headroom {_gib(headroom):.2f} GiB ({frac:.0%}) of {_gib(total):.1f} GiB; peak reserved {_gib(peak_res):.2f} GiB"
    if others:
        head += f", other processes {_gib(others):.2f} GiB"
    if "max_batch_size_estimate" in evidence:
        head += f"; batch size up to ~{evidence['max_batch_size_estimate']} would fit"
    if frac < FAIL_FRACTION:
        return result(CHECK, FAIL, head, evidence, "Lower the batch size, or use activation checkpointing / bf16.")
    if frac < WARN_FRACTION:
        return result(CHECK, WARN, head, evidence, "Leave more headroom: variable-size batches may OOM.")
    return result(CHECK, PASS, head, evidence)
