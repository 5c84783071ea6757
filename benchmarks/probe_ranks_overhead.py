"""Overhead of the probe's cross-rank checks (rank-sync, data-sharding, rank-skew) and of the probe on torchrun.

Two measurements:

1. In-process A/B (``--inprocess-only`` runs just this): one process, no process group, the same model and
   DataLoader; segments of steps alternate between no probe, the single-process probe, and the probe with the
   cross-rank instrumentation on (what every rank runs under ``--nproc-per-node``: parameter fingerprints, the
   batch and model-input fingerprints, the DistributedSampler watch). Every probed step is a sampled step
   (``sample_every=1``), since the cross-rank instrumentation only acts on sampled steps; the difference of the
   two probed medians is what the cross-rank checks cost per sampled step. There is no process group in this
   process: a collective added by the probe would raise here, so the run also shows that the checks add none.
2. End to end under torchrun (skipped with ``--inprocess-only``): ``python -m torch.distributed.run
   --standalone --nproc-per-node N workload.py`` against ``doctor probe --nproc-per-node N workload.py``, the
   workload's rank 0 timing its own steps: median sampled / unsampled step against the plain run, the run
   average, and launch-to-first-step (start-up) for both.

Usage:
    python benchmarks/probe_ranks_overhead.py                      # CPU, gloo, 2 ranks (2-core box)
    python benchmarks/probe_ranks_overhead.py --preset gpt --device cuda --nproc-per-node 2   # GPUs, NCCL
    python benchmarks/probe_ranks_overhead.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOAD = r'''
import json, os, sys, time
T_START = time.time()
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

cfg = json.loads(sys.argv[1])
out_path = sys.argv[2]
torch.set_num_threads(cfg.get("threads") or 1)
use_cuda = cfg["device"] == "cuda"
world = int(os.environ.get("WORLD_SIZE", "1"))
local = int(os.environ.get("LOCAL_RANK", "0"))
distributed = cfg.get("distributed", True)
if distributed:
    # NCCL needs a GPU per rank; with fewer GPUs than ranks, gloo (which also reduces CUDA tensors)
    dist.init_process_group("nccl" if use_cuda and torch.cuda.device_count() >= world else "gloo")
device = torch.device("cuda", local % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
if use_cuda:
    torch.cuda.set_device(device)
torch.manual_seed(0)
d, layers, batch, seq, vocab = cfg["width"], cfg["layers"], cfg["batch"], cfg["seq"], cfg["vocab"]


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        block = lambda: nn.TransformerEncoderLayer(d, cfg["heads"], 4 * d, dropout=0.0, activation=nn.GELU(),
                                                   batch_first=True, norm_first=True)
        self.blocks = nn.ModuleList(block() for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, idx):
        x = self.embed(idx) + self.pos
        for b in self.blocks:
            x = b(x, src_mask=self.mask, is_causal=True)
        return self.head(self.norm(x))


model = GPT().to(device)
if distributed:
    model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
tokens = torch.randint(0, vocab, (batch * 64, seq + 1))
dataset = TensorDataset(tokens)
sampler = DistributedSampler(dataset) if distributed else None
loader = DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=sampler is None, drop_last=True,
                    pin_memory=use_cuda)
autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg["bf16"])


def train_step(chunk):
    chunk = chunk.to(device, non_blocking=True)
    x, y = chunk[:, :-1], chunk[:, 1:]
    with autocast:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if use_cuda:
        torch.cuda.synchronize()


if cfg["steps"]:
    times, t_first = [], None
    t_last = time.perf_counter()
    rank0 = not distributed or dist.get_rank() == 0
    for epoch in range(10**6):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for (chunk,) in loader:
            train_step(chunk)
            now = time.perf_counter()
            t_first = t_first or time.time()
            times.append(now - t_last)
            t_last = now
            if rank0:  # every step: the probe may stop the script at any point
                with open(out_path, "w") as fh:
                    json.dump({"t_start": T_START, "t_first_step": t_first, "times": times, "device": device.type}, fh)
            if len(times) >= cfg["steps"]:
                sys.exit(0)
'''

INPROCESS = r'''
import json, os, statistics, sys, time
import torch
cfg = json.loads(sys.argv[1])
src = open(sys.argv[2]).read()
ns = {"__name__": "workload"}
sys.argv = ["workload", json.dumps(dict(cfg, steps=0, distributed=False)), os.devnull]
exec(compile(src, "workload", "exec"), ns)
from doctor.probe.hooks import Probe
from doctor.probe.options import ProbeOptions
from doctor.probe.stream import Emitter

loader, train_step = ns["loader"], ns["train_step"]
batches = iter(())


def step():
    global batches
    try:
        (chunk,) = next(batches)
    except StopIteration:
        batches = iter(loader)
        (chunk,) = next(batches)
    train_step(chunk)


class Counting(Emitter):
    def __init__(self):
        super().__init__(os.open(os.devnull, os.O_WRONLY))
        self.bytes = 0
        self.internal = []

    def write_line(self, text):
        self.bytes += len(text) + 1
        if '"ev":"internal"' in text:
            self.internal.append(text)  # an error inside the probe's hooks (a collective without a group would be one)
        super().write_line(text)


emitters = {"single": Counting(), "cross": Counting()}
probes = {
    "single": Probe(emitters["single"], "/nonexistent/script.py", ProbeOptions(steps=10**9, sample_every=1)),
    "cross": Probe(emitters["cross"], "/nonexistent/script.py", ProbeOptions(steps=10**9, sample_every=1, nproc_per_node=2)),
}
for _ in range(3):
    step()  # warm-up
times = {"plain": [], "single": [], "cross": []}
seg = cfg["segment"]


def segment(mode):
    probe = probes.get(mode)
    if probe is not None:
        probe.install()
        probe._set_forward_hooks(True)
    for _ in range(seg):
        t = time.perf_counter(); step(); times[mode].append(time.perf_counter() - t)
    if probe is not None:
        probe.uninstall()


orders = [("plain", "single", "cross"), ("cross", "plain", "single"), ("single", "cross", "plain")]
for r in range(cfg["rounds"]):
    for mode in orders[r % 3]:  # rotate: the position in a round costs a little on a loaded box
        segment(mode)
med = statistics.median
print(json.dumps({k: med(v) for k, v in times.items()} | {"n": {k: len(v) for k, v in times.items()},
      "bytes_per_step": {k: e.bytes / max(1, len(times[k])) for k, e in emitters.items()},
      "internal_errors": [t for e in emitters.values() for t in e.internal][:5]}))
'''

PRESETS = {
    # A small transformer: ~25-60 ms per step on one core of the 2-core box.
    "cpu": {"width": 256, "layers": 2, "heads": 4, "batch": 8, "seq": 64, "vocab": 512, "bf16": False, "threads": 1},
    # The GPU reference of benchmarks/probe_overhead.py: 12 layers, 768 wide, batch 16, sequence 512, bf16, AdamW.
    "gpt": {"width": 768, "layers": 12, "heads": 12, "batch": 16, "seq": 512, "vocab": 8192, "bf16": True, "threads": 0},
}


def _sampled(step: int, every: int) -> bool:
    return step < 3 or step % every == 0


def inprocess(script: str, cfg: dict, rounds: int, segment: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix="_inprocess.py", delete=False) as fh:
        fh.write(INPROCESS)
        path = fh.name
    env = dict(os.environ)
    if cfg["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, path, json.dumps(dict(cfg, rounds=rounds, segment=segment)), script],
                         capture_output=True, text=True, check=True, env=env)
    os.unlink(path)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    plain, single, cross = data["plain"], data["single"], data["cross"]
    return {
        "inprocess_plain_step_ms": 1000 * plain,
        "inprocess_sampled_step_ms_single_process_probe": 1000 * single,
        "inprocess_sampled_step_ms_with_cross_rank": 1000 * cross,
        "cross_rank_extra_ms_per_sampled_step": 1000 * (cross - single),
        "cross_rank_extra_fraction_of_plain_step": (cross - single) / plain,
        "event_bytes_per_sampled_step_single": data["bytes_per_step"]["single"],
        "event_bytes_per_sampled_step_cross": data["bytes_per_step"]["cross"],
        "inprocess_steps": data["n"],
        "inprocess_probe_internal_errors": data["internal_errors"],
    }


def run_torchrun(script: str, cfg: dict, probe: bool, steps: int, nproc: int, every: int) -> dict:
    out = tempfile.mktemp(suffix=".json")
    args = [json.dumps(cfg), out]
    env = dict(os.environ)
    if cfg["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if probe:
        # --steps beyond the script's own: the script ends by itself, so its last step is timed too
        cmd = [sys.executable, "-m", "doctor", "probe", "--nproc-per-node", str(nproc), script, "--steps", str(steps + 5),
               "--device", cfg["device"], "--sample-every", str(every), "-q", "--format", "json", "-o", out + ".report",
               "--", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), script, *args]
    t0 = time.time()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wall = time.time() - t0
    with open(out) as fh:
        data = json.load(fh)
    data["launch_to_first_step_s"] = data["t_first_step"] - t0
    data["wall_s"] = wall
    if probe and os.path.exists(out + ".report"):
        with open(out + ".report") as fh:
            report = json.load(fh)
        data["checks"] = {c["name"]: c["status"] for c in report.get("checks", [])}
    for p in (out, out + ".report"):
        if os.path.exists(p):
            os.unlink(p)
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--nproc-per-node", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sample-every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6, help="in-process A/B: rounds of (plain, probe, probe+cross-rank)")
    ap.add_argument("--segment", type=int, default=8, help="in-process A/B: steps per segment")
    ap.add_argument("--inprocess-only", action="store_true")
    ap.add_argument("--json", dest="json_out", default=None)
    opts = ap.parse_args()
    cfg = dict(PRESETS[opts.preset], device=opts.device, steps=opts.steps)
    with tempfile.NamedTemporaryFile("w", suffix="_ranks_workload.py", delete=False) as fh:
        fh.write(WORKLOAD)
        script = fh.name
    result: dict = {"preset": opts.preset, "config": cfg, "nproc_per_node": opts.nproc_per_node}
    result.update(inprocess(script, cfg, opts.rounds, opts.segment))
    if not opts.inprocess_only:
        runs: dict[str, list[dict]] = {"plain": [], "probe": []}
        for rep in range(opts.repeats):
            for mode in (("plain", "probe") if rep % 2 == 0 else ("probe", "plain")):
                runs[mode].append(run_torchrun(script, cfg, mode == "probe", opts.steps, opts.nproc_per_node,
                                               opts.sample_every))

        def per_step(mode: str) -> list[float]:
            n = min(len(r["times"]) for r in runs[mode])
            return [statistics.median(r["times"][i] for r in runs[mode]) for i in range(n)]

        plain, probed = per_step("plain"), per_step("probe")
        n = min(len(plain), len(probed))
        every = opts.sample_every
        sampled = [i for i in range(3, n) if _sampled(i, every)]
        unsampled = [i for i in range(3, n) if not _sampled(i, every)]
        plain_med = statistics.median(plain[i] for i in range(3, n))
        result.update({
            "torchrun_steps": n,
            "torchrun_plain_step_ms_median": 1000 * plain_med,
            "torchrun_sampled_step_ratio": statistics.median(probed[i] for i in sampled) / plain_med,
            "torchrun_unsampled_step_ratio": statistics.median(probed[i] for i in unsampled) / plain_med,
            "torchrun_run_average_ratio": statistics.fmean(probed[1:n]) / statistics.fmean(plain[1:n]),
            "torchrun_launch_to_first_step_plain_s": statistics.median(r["launch_to_first_step_s"] for r in runs["plain"]),
            "torchrun_launch_to_first_step_probe_s": statistics.median(r["launch_to_first_step_s"] for r in runs["probe"]),
            "probe_checks": runs["probe"][0].get("checks"),
        })
    os.unlink(script)
    for k, v in result.items():
        print(f"{k:48} {v:.3f}" if isinstance(v, float) else f"{k:48} {v}")
    if opts.json_out:
        with open(opts.json_out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
