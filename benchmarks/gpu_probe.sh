#!/usr/bin/env bash
# GPU checks of `doctor probe`, for a lent GPU machine (one short run, ~5 minutes on an H100).
#
#   bash benchmarks/gpu_probe.sh            # results under $OUT (or benchmarks/gpu_results/)
#
# 1. the healthy fixtures with --device cuda: every check passes or skips, memory-headroom passes;
# 2. trip_memory_headroom.py: memory-headroom fails, and its numbers agree with NVML (nvidia-smi);
# 3. --device cuda is honoured (device.type == cuda in the JSON);
# 4. overhead on the issue's reference workload (12-layer 768-wide GPT stack, batch 16, seq 512, bf16,
#    AdamW) and start-up time: benchmarks/probe_overhead.py --preset gpt --device cuda;
# 5. --recipe all on the healthy classifier: every recipe check passes on the GPU.
# Exit status: number of failed checks (0 = all good).
set -u
cd "$(dirname "$0")/.."
RES="${OUT:-benchmarks/gpu_results}"
mkdir -p "$RES"
PY="${PYTHON:-python}"
fail=0

$PY -m pip install -e . -q >/dev/null 2>&1 || true
$PY -c "import pynvml" 2>/dev/null || echo "note: nvidia-ml-py not installed; NVML numbers will be missing" | tee -a "$RES/summary.txt"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader,nounits | tee "$RES/nvidia-smi.csv"

for f in healthy_classifier healthy_regression trip_memory_headroom; do
  $PY -m doctor probe "fixtures/probe/$f.py" --device cuda --steps 20 --timeout 120 -q --format json -o "$RES/$f.json"
  echo "$f exit=$?" | tee -a "$RES/summary.txt"
done

$PY - "$RES" <<'EOF' | tee -a "$RES/summary.txt"
import json, subprocess, sys
res = sys.argv[1]
bad = 0
def load(name):
    return json.load(open(f"{res}/{name}.json"))
smi_total_mib = float(open(f"{res}/nvidia-smi.csv").read().split(",")[1])
for name in ("healthy_classifier", "healthy_regression"):
    d = load(name)
    st = {c["name"]: c["status"] for c in d["checks"]}
    ok = d["device"].get("type") == "cuda" and all(s in ("pass", "skip") for s in st.values()) and st["memory-headroom"] == "pass"
    bad += not ok
    mh = next(c for c in d["checks"] if c["name"] == "memory-headroom")
    print(f"{name}: {'OK' if ok else 'FAIL'} {st}\n  memory-headroom: {mh['summary']}")
d = load("trip_memory_headroom")
mh = next(c for c in d["checks"] if c["name"] == "memory-headroom")
ev = mh["evidence"]
total_ok = abs(ev["total_gib"] * 1024 - smi_total_mib) / smi_total_mib < 0.02
print(f"trip_memory_headroom: status={mh['status']} (want fail) total={ev['total_gib']} GiB vs nvidia-smi {smi_total_mib/1024:.2f} GiB "
      f"({'agree' if total_ok else 'DISAGREE'}); nvml_used={ev.get('nvml_used_gib')} GiB peak_reserved={ev['peak_reserved_gib']} GiB "
      f"headroom={ev['headroom_gib']} GiB nvml={ev['nvml']}")
bad += (mh["status"] != "fail") + (not total_ok)
print(f"checks failed: {bad}")
sys.exit(min(bad, 100))
EOF
fail=$((fail + $?))

# 5. Karpathy's recipe on the GPU (the device's RNG state is saved and restored around the experiments):
#    every recipe check passes on the healthy classifier.
$PY -m doctor probe fixtures/probe/healthy_classifier.py --device cuda --steps 12 --recipe all --timeout 180 -q \
    --format json -o "$RES/recipe_healthy_classifier.json"
$PY - "$RES" <<'EOF' | tee -a "$RES/summary.txt"
import json, sys
d = json.load(open(f"{sys.argv[1]}/recipe_healthy_classifier.json"))
st = {c["name"]: (c["status"], c["summary"]) for c in d["checks"]}
recipe = ["overfit-batch", "input-independent", "batch-independence", "lr-range"]
bad = sum(st.get(r, ("missing",))[0] != "pass" for r in recipe)
for r in recipe:
    print(f"recipe {r}: {st.get(r)}")
print(f"recipe checks failed: {bad}")
sys.exit(bad)
EOF
fail=$((fail + $?))

$PY benchmarks/probe_overhead.py --preset gpt --device cuda --steps 40 --repeats 2 --json "$RES/overhead_gpt.json" | tee "$RES/overhead_gpt.txt"
$PY benchmarks/probe_overhead.py --preset cpu --device cpu --steps 40 --repeats 2 --json "$RES/overhead_cpu_on_gpu_host.json" | tee "$RES/overhead_cpu.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$RES/nvidia-smi.csv"
echo "gpu_probe.sh: $fail failed check(s); results in $RES"
exit "$fail"
