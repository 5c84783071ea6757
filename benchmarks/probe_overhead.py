"""Overhead of `doctor probe`: the same training script run plain and under the probe.

Reports, against the plain run:
- instrumented-step ratio: median time of the *sampled* steps (full statistics) under the probe;
- run-average ratio: mean step time over the whole probed run (sampled and unsampled steps);
- probe start-up: extra seconds from launch until the script's own ``import torch`` has returned
  (a script that only imports torch, launched plain and under the probe, alternating).

Usage:
    python benchmarks/probe_overhead.py                      # CPU preset: small transformer, 2 cores
    python benchmarks/probe_overhead.py --preset gpt --device cuda   # the issue's H100 setup
    python benchmarks/probe_overhead.py --json results.json  # also write the numbers

Each mode runs ``--repeats`` times, alternating, and per-step times are the median over repeats:
the machine may be shared, so single runs are noisy. A second, in-process A/B measurement alternates
segments of plain and instrumented steps of the same model in one process (hooks installed and removed
between segments), which is immune to load drift; it gives the per-step costs without process start-up.
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
from torch import nn
T_IMPORTED = time.time()

cfg = json.loads(sys.argv[1])
out_path = sys.argv[2]
if cfg.get("threads"):
    torch.set_num_threads(cfg["threads"])  # one thread: steadier timings on a small, possibly shared CPU box
device = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
d, layers, heads, batch, seq, vocab = cfg["width"], cfg["layers"], cfg["heads"], cfg["batch"], cfg["seq"], cfg["vocab"]


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        block = lambda: nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation=nn.GELU(),
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
opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
data = torch.randint(0, vocab, (batch, seq + 1), device=device)
autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cfg["bf16"])
times = []
t_last = time.perf_counter()
for step in range(cfg["steps"]):
    x, y = data[:, :-1], data[:, 1:]
    with autocast:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    now = time.perf_counter()
    times.append(now - t_last)
    t_last = now
    with open(out_path, "w") as fh:  # every step: the probe may stop the script at any point
        json.dump({"t_start": T_START, "t_imported": T_IMPORTED, "times": times, "device": device}, fh)
'''

PRESETS = {
    # A small transformer that takes ~20-40 ms per step on 2 CPU cores.
    "cpu": {"width": 256, "layers": 2, "heads": 4, "batch": 8, "seq": 64, "vocab": 512, "bf16": False, "threads": 1},
    # The reference: 12-layer, 768-wide GPT block stack, batch 16, sequence 512, bf16 autocast, AdamW.
    # Step of a few ms: makes the probe's fixed per-step cost (Python hooks) visible in absolute terms.
    "tiny": {"width": 32, "layers": 1, "heads": 2, "batch": 4, "seq": 16, "vocab": 64, "bf16": False, "threads": 1},
    "gpt": {"width": 768, "layers": 12, "heads": 12, "batch": 16, "seq": 512, "vocab": 8192, "bf16": True},
}


def _sampled(step: int, every: int) -> bool:
    return step < 3 or step % every == 0


def run_once(script: str, cfg: dict, probe: bool, steps: int, device: str, every: int) -> dict:
    out = tempfile.mktemp(suffix=".json")
    args = [json.dumps(cfg), out]
    if probe:
        # --steps beyond the script's own: the script ends by itself, so its last step is timed too.
        cmd = [sys.executable, "-m", "doctor", "probe", script, "--steps", str(steps + 5), "--device", device,
               "--sample-every", str(every), "-q", "--format", "json", "-o", out + ".report", "--", *args]
    else:
        cmd = [sys.executable, script, *args]
        if device == "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    with open(out) as fh:
        data = json.load(fh)
    for p in (out, out + ".report"):
        if os.path.exists(p):
            os.unlink(p)
    return data


INPROCESS = r'''
import json, os, statistics, sys, time
import torch
cfg = json.loads(sys.argv[1])
src = open(sys.argv[2]).read()
# Build the workload's model and data without its loop: everything above the loop line.
head = src.split("times = []")[0]
ns = {"__name__": "workload"}
sys.argv = ["workload", json.dumps(dict(cfg, steps=0)), os.devnull]
exec(compile(head, "workload", "exec"), ns)
from doctor.probe.hooks import Probe, ProbeStop
from doctor.probe.options import ProbeOptions
from doctor.probe.stream import Emitter
model, opt, data, autocast, vocab, device = (ns[k] for k in ("model", "opt", "data", "autocast", "vocab", "device"))
nn = torch.nn


def step():
    x, y = data[:, :-1], data[:, 1:]
    with autocast:
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab).float(), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()


probe = Probe(Emitter(os.open(os.devnull, os.O_WRONLY)), "/nonexistent/script.py",
              ProbeOptions(steps=10**9, sample_every=cfg["sample_every"]))
for _ in range(3):
    step()  # warm-up
plain, sampled, unsampled = [], [], []
seg = cfg["segment"]



def plain_segment():
    for i in range(seg):  # no hooks at all
        t = time.perf_counter(); step(); plain.append(time.perf_counter() - t)


def probe_segment():
    probe.install()
    probe.sampling = probe.step < 3 or probe.step % probe.sample_every == 0
    probe._set_forward_hooks(probe.sampling)
    for i in range(seg):  # sampled steps as in a real probe run
        was = probe.sampling
        t = time.perf_counter(); step(); dt = time.perf_counter() - t
        (sampled if was else unsampled).append(dt)
    probe.uninstall()


for r in range(cfg["rounds"]):
    # alternate which segment goes first: the second of a pair runs measurably slower on a loaded box
    for segment in ((plain_segment, probe_segment) if r % 2 == 0 else (probe_segment, plain_segment)):
        segment()
med = statistics.median
print(json.dumps({"plain": med(plain), "sampled": med(sampled), "unsampled": med(unsampled),
                  "n": [len(plain), len(sampled), len(unsampled)]}))
'''


def inprocess(script: str, cfg: dict, every: int, rounds: int, segment: int) -> dict:
    """Plain and instrumented steps interleaved in one process: immune to load drift on a shared machine."""
    with tempfile.NamedTemporaryFile("w", suffix="_inprocess.py", delete=False) as fh:
        fh.write(INPROCESS)
        path = fh.name
    conf = dict(cfg, sample_every=every, rounds=rounds, segment=segment)
    out = subprocess.run([sys.executable, path, json.dumps(conf), script], capture_output=True, text=True, check=True)
    os.unlink(path)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "inprocess_plain_step_ms": 1000 * data["plain"],
        "inprocess_sampled_step_ratio": data["sampled"] / data["plain"],
        "inprocess_unsampled_step_ratio": data["unsampled"] / data["plain"],
        "inprocess_steps": data["n"],
        # absolute costs: what a step pays for the probe, whatever the step's own size
        "inprocess_sampled_extra_ms": 1000 * (data["sampled"] - data["plain"]),
        "inprocess_unsampled_extra_us": 1e6 * (data["unsampled"] - data["plain"]),
    }


STARTUP_SCRIPT = "import json, sys, time\nimport torch\njson.dump({'t': time.time()}, open(sys.argv[1], 'w'))\n"


def startup(repeats: int) -> dict:
    """Launch -> the script's own `import torch` returned, plain vs under the probe (alternating, medians)."""
    with tempfile.NamedTemporaryFile("w", suffix="_startup.py", delete=False) as fh:
        fh.write(STARTUP_SCRIPT)
        path = fh.name
    times: dict[str, list[float]] = {"plain": [], "probe": []}
    for _ in range(repeats):
        for mode in ("plain", "probe"):
            out = tempfile.mktemp(suffix=".json")
            cmd = [sys.executable, path, out] if mode == "plain" else [
                sys.executable, "-m", "doctor", "probe", path, "-q", "--format", "json", "-o", out + ".r", "--", out]
            t0 = time.time()
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(out) as fh2:
                times[mode].append(json.load(fh2)["t"] - t0)
            for p in (out, out + ".r"):
                if os.path.exists(p):
                    os.unlink(p)
    os.unlink(path)
    plain, probe = statistics.median(times["plain"]), statistics.median(times["probe"])
    return {"startup_plain_s": plain, "startup_probe_s": probe, "startup_overhead_s": probe - plain}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample-every", type=int, default=5)
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--startup-repeats", type=int, default=5)
    ap.add_argument("--inprocess-only", action="store_true", help="only the in-process A/B (no subprocess runs)")
    ap.add_argument("--rounds", type=int, default=6, help="in-process A/B: plain/instrumented segment pairs")
    ap.add_argument("--segment", type=int, default=10, help="in-process A/B: steps per segment")
    opts = ap.parse_args()
    cfg = dict(PRESETS[opts.preset], steps=opts.steps, device=opts.device)
    with tempfile.NamedTemporaryFile("w", suffix="_workload.py", delete=False) as fh:
        fh.write(WORKLOAD)
        script = fh.name
    if opts.inprocess_only:
        ab = inprocess(script, cfg, opts.sample_every, opts.rounds, opts.segment)
        os.unlink(script)
        for k, v in ab.items():
            print(f"{k:28} {v:.3f}" if isinstance(v, float) else f"{k:28} {v}")
        if opts.json_out:
            with open(opts.json_out, "w") as fh:
                json.dump({"preset": opts.preset, "config": cfg, **ab}, fh, indent=2)
        return 0
    runs: dict[str, list[dict]] = {"plain": [], "probe": []}
    for rep in range(opts.repeats):
        for mode in (("plain", "probe") if rep % 2 == 0 else ("probe", "plain")):
            runs[mode].append(run_once(script, cfg, mode == "probe", opts.steps, opts.device, opts.sample_every))
    ab = inprocess(script, cfg, opts.sample_every, opts.rounds, opts.segment)
    os.unlink(script)

    def per_step(mode: str) -> list[float]:
        n = min(len(r["times"]) for r in runs[mode])
        return [statistics.median(r["times"][i] for r in runs[mode]) for i in range(n)]

    plain, probed = per_step("plain"), per_step("probe")
    n = min(len(plain), len(probed))
    every = opts.sample_every
    # step 0 is warm-up (allocations, autotuning) in both modes; steps 1-2 are sampled but still warming up.
    sampled = [i for i in range(3, n) if _sampled(i, every)]
    unsampled = [i for i in range(3, n) if not _sampled(i, every)]
    plain_med = statistics.median(plain[i] for i in range(3, n))
    result = {
        "preset": opts.preset,
        "config": cfg,
        "device": runs["probe"][0].get("device"),
        "steps": n,
        "repeats": opts.repeats,
        "plain_step_ms_median": 1000 * plain_med,
        "instrumented_step_ratio": statistics.median(probed[i] for i in sampled) / plain_med,
        "unsampled_step_ratio": statistics.median(probed[i] for i in unsampled) / plain_med,
        "run_average_ratio": statistics.fmean(probed[1:n]) / statistics.fmean(plain[1:n]),
        **startup(opts.startup_repeats),
        **ab,
    }
    # A 20-step probe samples steps 0, 1, 2, 5, 10, 15: the run average follows from the two step costs.
    frac = sum(_sampled(i, every) for i in range(20)) / 20
    result["inprocess_20_step_run_average_ratio"] = (
        frac * ab["inprocess_sampled_step_ratio"] + (1 - frac) * ab["inprocess_unsampled_step_ratio"])
    for k, v in result.items():
        print(f"{k:28} {v:.3f}" if isinstance(v, float) else f"{k:28} {v}")
    if opts.json_out:
        with open(opts.json_out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
