"""Speed of `doctor check` versus torchfix on real PyTorch code, and doctor's warm and pre-commit-style runs.

Run from anywhere: ``python benchmarks/bench_static.py [--runs 3] [--skip-torchfix] [--out FILE]``.

* Corpus: training and model code from the pinned transformers and accelerate wheels, unpacked under
  ``benchmarks/corpus/src`` (git-ignored; re-created with ``pip download --no-deps`` + unzip when absent).
* torchfix runs from its own venv ``benchmarks/.venv-torchfix`` (created when absent); it needs libcst but
  not torch to lint.
* Every measurement is the wall time of a fresh process (interpreter start included), median of N runs.
  Both tools use all cores (torchfix's ``--jobs`` defaults to the core count, doctor's ``--jobs`` too).
* Results go to ``benchmarks/WORKFLOW_BENCH.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import compileall
import glob
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
SRC = os.path.join(CORPUS, "src")
WHEELS = os.path.join(CORPUS, "wheels")
TORCHFIX_VENV = os.path.join(HERE, ".venv-torchfix")
PINS = {"transformers": "5.24.0", "accelerate": "1.15.0"}
TORCHFIX_PIN = "torchfix==0.7.0"

#: Model families whose modeling code is in the corpus: the architectures people actually train.
MODELS = (
    "llama", "gpt2", "bert", "t5", "mistral", "mixtral", "qwen2", "gemma", "whisper", "vit", "clip", "bart",
    "roberta", "gpt_neox", "opt", "falcon", "phi", "mamba", "deberta_v2", "wav2vec2", "bloom",
)  # fmt: skip
#: Training-side transformers modules (trainer, optimizers, schedules, losses, collators, generation).
TRANSFORMERS_GLOBS = (
    "trainer*.py", "training_args*.py", "optimization.py", "modeling_utils.py", "pytorch_utils.py",
    "initialization.py", "loss/*.py", "data/*.py", "generation/*.py",
)  # fmt: skip
_IMPORTS_TORCH = re.compile(r"^\s*(import torch|from torch[ .])", re.MULTILINE)


def ensure_corpus() -> None:
    """Unpack the pinned wheels into ``corpus/src/<name>/`` unless already there."""
    for name, version in PINS.items():
        if os.path.isdir(os.path.join(SRC, name, name)):
            continue
        os.makedirs(WHEELS, exist_ok=True)
        wheel = glob.glob(os.path.join(WHEELS, f"{name}-{version}-*.whl"))
        if not wheel:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", WHEELS, f"{name}=={version}"],
                check=True,
            )
            wheel = glob.glob(os.path.join(WHEELS, f"{name}-{version}-*.whl"))
        with zipfile.ZipFile(wheel[0]) as zf:
            zf.extractall(os.path.join(SRC, name))


def ensure_torchfix() -> str:
    exe = os.path.join(TORCHFIX_VENV, "bin", "torchfix")
    if not os.path.exists(exe):
        subprocess.run([sys.executable, "-m", "venv", TORCHFIX_VENV], check=True)
        subprocess.run([os.path.join(TORCHFIX_VENV, "bin", "pip"), "install", "-q", TORCHFIX_PIN], check=True)
    return exe


def corpus_files() -> list[str]:
    """Real PyTorch training/model code: all of accelerate and the training side of transformers that imports torch."""
    candidates: list[str] = []
    candidates += glob.glob(os.path.join(SRC, "accelerate", "accelerate", "**", "*.py"), recursive=True)
    tf = os.path.join(SRC, "transformers", "transformers")
    for pattern in TRANSFORMERS_GLOBS:
        candidates += glob.glob(os.path.join(tf, pattern))
    for model in MODELS:
        candidates += glob.glob(os.path.join(tf, "models", model, "modeling_*.py"))
    out = []
    for path in sorted(set(candidates)):
        with open(path, encoding="utf-8", errors="replace") as fh:
            if _IMPORTS_TORCH.search(fh.read()):
                out.append(os.path.relpath(path, REPO))
    return out


def count_lines(files: list[str]) -> int:
    total = 0
    for path in files:
        with open(os.path.join(REPO, path), "rb") as fh:
            total += fh.read().count(b"\n")
    return total


def timed(cmd: list[str], runs: int, *, env: dict | None = None, before=None) -> tuple[float, list[float], float, subprocess.CompletedProcess]:
    """Median wall time of ``runs`` fresh processes, all wall times, median CPU time (user+sys, children included), last process."""
    times, cpu = [], []
    proc = None
    for _ in range(runs):
        if before is not None:
            before()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{cmd[:4]}... failed with {proc.returncode}:\n{proc.stderr[-2000:]}")
    assert proc is not None
    return statistics.median(times), times, statistics.median(cpu), proc


def snapshot_package(dest: str) -> dict:
    """Copy doctor (with ``rules/`` as ``doctor/rules``) and byte-compile it, as ``pip install`` does.

    The measured code then cannot change under the benchmark (the tree is edited while it runs), and no run
    pays for compiling doctor's modules (this machine sets PYTHONDONTWRITEBYTECODE, so the editable install
    recompiles them in every process). Returns the environment that imports the snapshot.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(REPO, "doctor"), os.path.join(dest, "doctor"), ignore=ignore)
    shutil.rmtree(os.path.join(dest, "doctor", "rules"), ignore_errors=True)
    shutil.copytree(os.path.join(REPO, "rules"), os.path.join(dest, "doctor", "rules"), ignore=ignore)
    compileall.compile_dir(dest, quiet=1)
    env = {k: v for k, v in os.environ.items() if k not in ("DOCTOR_CACHE_DIR", "DOCTOR_DEBUG")}
    env["PYTHONPATH"] = dest
    env["PYTHONSAFEPATH"] = "1"  # the current folder (the repository) must not shadow the snapshot
    where = subprocess.run(
        [sys.executable, "-c", "import doctor, doctor.rules.static as s; print(doctor.__file__); print(s.__file__)"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(w.startswith(dest) for w in where), f"the snapshot is not what gets imported: {where}"
    return env


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def precommit_files() -> list[str]:
    """Five typical training scripts: doctor's own fixtures when there are enough, else small corpus files."""
    fixtures = sorted(glob.glob(os.path.join(REPO, "fixtures", "static", "**", "*.py"), recursive=True))
    files = [os.path.relpath(p, REPO) for p in fixtures[:5]]
    if len(files) < 5:
        small = sorted(corpus_files(), key=lambda p: os.path.getsize(os.path.join(REPO, p)))
        middle = len(small) // 2
        files += small[middle : middle + 5 - len(files)]
    return files


def machine() -> str:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores (`nproc`: {os.cpu_count()}), CPU `{model}`, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def fmt_times(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--torchfix-runs", type=int, default=None, help="default: --runs")
    parser.add_argument("--skip-torchfix", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "WORKFLOW_BENCH.md"))
    args = parser.parse_args()
    args.torchfix_runs = args.torchfix_runs or args.runs

    ensure_corpus()
    files = corpus_files()
    lines = count_lines(files)
    print(f"corpus: {len(files)} files, {lines} lines", flush=True)
    doctor = [sys.executable, "-m", "doctor", "check", "--exit-zero"]
    work = tempfile.mkdtemp(prefix="doctor-bench-")
    cache_dir = os.path.join(work, "cache")
    load_before = loadavg()
    rows = []
    try:
        env = snapshot_package(os.path.join(work, "pkg"))
        cold, cold_all, cold_cpu, proc = timed([*doctor, "--no-cache", *files], args.runs, env=env)
        n_findings = len(re.findall(r"^\S+:\d+:\d+: ", proc.stdout, re.MULTILINE))
        print(f"doctor cold: {cold:.2f}s ({fmt_times(cold_all)}), cpu {cold_cpu:.2f}s, {n_findings} findings", flush=True)
        rows.append(("doctor cold (`--no-cache`, default rules)", cold, cold_all, cold_cpu))
        r = timed([*doctor, "--no-cache", "--select", "ALL", *files], args.runs, env=env)
        rows.append(("doctor cold (`--no-cache --select ALL`)", *r[:3]))
        r = timed([*doctor, "--no-cache", "--jobs", "1", *files], args.runs, env=env)
        rows.append(("doctor cold, one process (`--no-cache --jobs 1`)", *r[:3]))

        def clear_cache() -> None:
            shutil.rmtree(cache_dir, ignore_errors=True)

        r = timed([*doctor, "--cache-dir", cache_dir, *files], args.runs, env=env, before=clear_cache)
        rows.append(("doctor first run with an empty cache (fills it)", *r[:3]))
        subprocess.run([*doctor, "--cache-dir", cache_dir, *files], cwd=REPO, env=env, capture_output=True)
        warm, warm_all, warm_cpu, warm_proc = timed([*doctor, "--cache-dir", cache_dir, *files], max(args.runs, 5), env=env)
        assert warm_proc.stdout == proc.stdout, "a warm run must report exactly what a cold run reports"
        rows.append(("doctor warm (cache filled, files unchanged)", warm, warm_all, warm_cpu))
        print(f"doctor warm: {warm:.3f}s, cpu {warm_cpu:.3f}s", flush=True)

        # The floor under any warm run: the interpreter with site (this environment's .pth files included)
        # and the CLI framework. A warm run cannot be faster than `doctor --version`.
        r = timed([sys.executable, "-c", "pass"], max(args.runs, 5), env=env)
        rows.append(("floor: `python -c pass` (interpreter + site)", *r[:3]))
        r = timed([sys.executable, "-m", "doctor", "--version"], max(args.runs, 5), env=env)
        rows.append(("floor: `python -m doctor --version` (+ click and the CLI module)", *r[:3]))

        five = precommit_files()
        pc, pc_all, pc_cpu, _ = timed([*doctor, "--no-cache", *five], max(args.runs, 5), env=env)
        rows.append((f"doctor pre-commit style: {len(five)} files, one invocation, `--no-cache`", pc, pc_all, pc_cpu))
        print(f"pre-commit style (5 files, no cache): {pc:.3f}s", flush=True)

        stats_proc = subprocess.run(
            [*doctor, "--no-cache", "--statistics", "--select", "ALL", *files], cwd=REPO, capture_output=True, text=True, env=env
        )
        slow = stats_proc.stdout.split("Slowest rules", 1)
        slowest = ("Slowest rules" + slow[1].split("\n\n", 1)[0]) if len(slow) == 2 else "(no timing output)"

        tf_note = "not measured (--skip-torchfix)"
        tf = tf_cpu = None
        if not args.skip_torchfix:
            exe = ensure_torchfix()
            version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
            tf, tf_all, tf_cpu, tf_proc = timed([exe, *files], args.torchfix_runs)
            tf_findings = len(re.findall(r"^\S+:\d+:\d+: TOR", tf_proc.stdout, re.MULTILINE))
            rows.append(("torchfix (same files, same cores)", tf, tf_all, tf_cpu))
            tf_note = f"torchfix {version}, default rules, `--jobs` default (= {os.cpu_count()} cores); {tf_findings} findings"
            print(f"torchfix: {tf:.2f}s ({fmt_times(tf_all)}), cpu {tf_cpu:.2f}s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = loadavg()

    targets = []
    if tf is not None:
        targets.append(
            f"- cold vs torchfix: torchfix / doctor = **{tf / cold:.1f}x** wall, {tf_cpu / cold_cpu:.1f}x CPU "
            f"(target: at least 10x) — {'met' if tf / cold >= 10 else 'MISSED'}"
        )
    else:
        targets.append("- cold vs torchfix: not measured (--skip-torchfix)")
    targets += [
        f"- warm vs cold: doctor cold / warm = **{cold / warm:.1f}x** wall, {cold_cpu / warm_cpu:.1f}x CPU "
        f"(target: at least 20x) — {'met' if cold / warm >= 20 else 'MISSED'}",
        f"- pre-commit style on 5 files: **{pc:.3f} s** wall (best {min(pc_all):.3f} s), {pc_cpu:.3f} s CPU "
        f"(target: under 0.5 s) — {'met' if pc < 0.5 else 'MISSED'}",
    ]
    report = [
        "# Static checker speed (workflow benchmarks)",
        "",
        f"Generated by `python benchmarks/bench_static.py --runs {args.runs} --torchfix-runs {args.torchfix_runs}` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- Machine: {machine()}.",
        f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}. Other jobs shared this machine, so "
        "wall times carry their noise; CPU time (user+sys of the process and its workers) is the steadier number.",
        f"- Corpus: {len(files)} files, {lines} lines: every file that imports torch in accelerate {PINS['accelerate']}, "
        f"and in transformers {PINS['transformers']} the trainer, training arguments, optimization, modeling utils, losses, "
        f"data collators, generation, and the modeling code of {len(MODELS)} model families ({', '.join(MODELS)}).",
        "- Each number is a fresh process (interpreter start-up included), median of the runs listed. doctor runs "
        "from a byte-compiled snapshot of the working tree, as after `pip install`.",
        f"- torchfix: {tf_note}.",
        f"- doctor: {n_findings} finding(s) with the default rules on the corpus.",
        "",
        "| run | median wall | best wall | median CPU | wall per run (s) |",
        "|---|---|---|---|---|",
        *[f"| {name} | {wall:.3f} s | {min(all_):.3f} s | {cpu:.2f} s | {fmt_times(all_)} |" for name, wall, all_, cpu in rows],
        "",
        "## Targets",
        "",
        *targets,
        "",
        f"Pre-commit-style files: {', '.join(f'`{f}`' for f in five)}.",
        "",
        "## Slowest rules (`doctor check --no-cache --statistics --select ALL` on the corpus, one run)",
        "",
        "The first rule that asks for `ctx.model` pays for building the training-loop model of the file.",
        "",
        "```",
        slowest.strip(),
        "```",
        "",
        "Commands (from the repository root; `FILES` is the corpus list above):",
        "",
        "```",
        "python -m doctor check --exit-zero --no-cache FILES                       # cold",
        "python -m doctor check --exit-zero --cache-dir DIR FILES                  # first run, then warm",
        "python -m doctor check --exit-zero --no-cache --statistics --select ALL FILES",
        "benchmarks/.venv-torchfix/bin/torchfix FILES",
        "```",
        "",
    ]
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
