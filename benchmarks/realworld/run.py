"""Run the current doctor over the real-world corpus; report findings, precision and mutation recall.

    python benchmarks/realworld/layout.py --git-dirs /work/.mirror      # once: lay the corpus out
    python benchmarks/realworld/run.py                 # findings.json + counts + precision from triage.json
    python benchmarks/realworld/run.py --check         # also exit 1 on an untriaged finding / error false alarm
    python benchmarks/realworld/run.py --mutate        # plant bugs in the real loops -> mutants.json + recall

doctor is a black box here: ``python -m doctor check`` with the default rules, ``--format json --no-cache
--exit-zero`` and the corpus's ``doctor.toml`` (only ``respect-gitignore = false``).

Findings are keyed for triage by ``repo|path|rule|<stripped source line>`` (plus ``#n`` for the n-th finding with
the same key), so verdicts survive line moves. Verdicts in ``triage.json``: ``true`` (a real bug),
``defensible`` (a warning a maintainer would accept), ``false`` (a false alarm).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(REPO_ROOT, "benchmarks", "corpus", "realworld")
FINDINGS = os.path.join(HERE, "findings.json")
TRIAGE = os.path.join(HERE, "triage.json")
MUTANTS = os.path.join(HERE, "mutants.json")
VERDICTS = ("true", "defensible", "false")


def doctor_cmd() -> list[str]:
    return [sys.executable, "-m", "doctor"]


def doctor_provenance() -> dict:
    """Which doctor ran: its version and, for an editable install, the git commit of its source (and whether the
    source had uncommitted changes)."""
    code = (
        "import doctor, os, sys; from importlib.metadata import version; "
        "print(version('torch-doctor')); print(os.path.dirname(doctor.__file__))"
    )
    # Run where no `doctor` folder shadows the installed one (as for the checks themselves, which run in the
    # corpus or a scratch folder): from this repository's root, `-c` would import this checkout's copy.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         cwd=tempfile.gettempdir())
    info: dict = {}
    lines = out.stdout.split("\n")
    if len(lines) >= 2:
        info["version"], src = lines[0].strip(), lines[1].strip()
        head = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--", "."], capture_output=True,
                                   text=True, check=False)
            info["uncommitted_changes"] = bool(dirty.stdout.strip())
    return info


def corpus_repos(corpus: str) -> list[str]:
    if not os.path.isdir(corpus):
        sys.exit(f"no corpus at {corpus}: run `python benchmarks/realworld/layout.py --git-dirs DIR` first")
    names = sorted(d for d in os.listdir(corpus) if "__" in d and os.path.isdir(os.path.join(corpus, d)))
    if not names:
        sys.exit(f"corpus {corpus} is empty: run layout.py first")
    return names


def run_doctor(paths: list[str], cwd: str, extra: list[str] = (), config: str | None = None) -> dict:
    cmd = doctor_cmd() + ["check", *paths, "--format", "json", "--no-cache", "--exit-zero", *extra]
    if config:
        cmd += ["--config", config]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        sys.exit(f"doctor did not print JSON (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


# --------------------------------------------------------------------------------------------- source lines


def _cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


_lines_cache: dict[str, object] = {}


def source_line(abs_path: str, line: int, cell: int | None) -> str:
    """The stripped text of ``line`` (1-based; within ``cell`` for notebooks)."""
    if abs_path not in _lines_cache:
        with open(abs_path, encoding="utf-8", errors="replace") as fh:
            raw = fh.read()
        if abs_path.endswith(".ipynb"):
            try:
                nb = json.loads(raw)
                _lines_cache[abs_path] = [_cell_source(c).splitlines() for c in nb.get("cells", [])]
            except ValueError:
                _lines_cache[abs_path] = []
        else:
            _lines_cache[abs_path] = raw.splitlines()
    data = _lines_cache[abs_path]
    try:
        if abs_path.endswith(".ipynb"):
            return data[cell or 0][line - 1].strip()
        return data[line - 1].strip()
    except (IndexError, TypeError):
        return ""


def normalise(report: dict, corpus: str) -> list[dict]:
    """doctor's JSON findings -> our records (repo, repo-relative path, source text, stable key)."""
    out = []
    for f in report["findings"]:
        path = f["path"].replace(os.sep, "/")
        if path.startswith("./"):
            path = path[2:]
        repo_slug, _, rel = path.partition("/")
        abs_path = os.path.join(corpus, repo_slug, rel)
        text = source_line(abs_path, f["line"], f.get("cell"))
        rec = {
            "repo": repo_slug.replace("__", "/", 1),
            "path": rel,
            "cell": f.get("cell"),
            "line": f["line"],
            "rule": f["rule"],
            "code": f["code"],
            "severity": f["severity"],
            "message": f["message"],
            "text": text,
        }
        out.append(rec)
    out.sort(key=lambda r: (r["repo"], r["path"], r["cell"] or 0, r["line"], r["rule"]))
    seen: collections.Counter = collections.Counter()
    for rec in out:
        base = f"{rec['repo']}|{rec['path']}|{rec['rule']}|{rec['text']}"
        seen[base] += 1
        rec["key"] = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return out


def load_triage(path: str = TRIAGE) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return data.get("verdicts", data)


def where(rec: dict) -> str:
    cell = f" cell {rec['cell']}" if rec.get("cell") is not None else ""
    return f"{rec['repo'].replace('/', '__')}/{rec['path']}{cell}:{rec['line']}"


def report_findings(findings: list[dict], triage: dict, summary: dict, check: bool) -> int:
    print(f"\n{summary.get('files', '?')} files checked, {len(findings)} findings")
    by_rule = collections.Counter((r["code"], r["rule"], r["severity"]) for r in findings)
    verdict_of = {r["key"]: triage.get(r["key"], {}).get("verdict") for r in findings}
    print(f"\n{'code':6s} {'rule':34s} {'sev':8s} {'n':>4s} {'true':>5s} {'def':>5s} {'false':>5s} {'untr':>5s}")
    for (code, rule, sev), n in sorted(by_rule.items()):
        vs = collections.Counter(verdict_of[r["key"]] for r in findings if r["rule"] == rule)
        print(f"{code:6s} {rule:34s} {sev:8s} {n:4d} {vs['true']:5d} {vs['defensible']:5d} {vs['false']:5d} {vs[None]:5d}")
    totals = collections.Counter(verdict_of.values())
    untriaged = [r for r in findings if verdict_of[r["key"]] not in VERDICTS]
    error_false = [r for r in findings if verdict_of[r["key"]] == "false" and r["severity"] == "error"]
    n = len(findings)
    judged = n - len(untriaged)
    print(
        f"\nverdicts: true {totals['true']}, defensible {totals['defensible']}, false alarm {totals['false']}, "
        f"untriaged {len(untriaged)}"
    )
    if judged:
        strict = totals["true"] / judged
        lenient = (totals["true"] + totals["defensible"]) / judged
        print(f"precision (true / triaged): {strict:.1%};  (true + defensible) / triaged: {lenient:.1%}")
    print(f"false alarms at error severity: {len(error_false)}")
    for r in error_false:
        print(f"  {where(r)}  {r['rule']}  {r['text'][:90]}")
    stale = sorted(set(triage) - {r["key"] for r in findings})
    if stale:
        print(f"\n{len(stale)} triage entries no longer match a finding (fixed, or the line changed):")
        for k in stale:
            print(f"  [{triage[k].get('verdict')}] {k[:150]}")
    if untriaged:
        print(f"\n{len(untriaged)} untriaged:")
        for r in untriaged:
            print(f"  {where(r)}  {r['rule']}  {r['text'][:90]}")
    if check and (untriaged or error_false):
        print("\n--check: FAIL (untriaged findings or error-severity false alarms)")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--check", action="store_true", help="exit 1 on an untriaged finding or an error false alarm")
    ap.add_argument("--mutate", action="store_true", help="mutation mode: plant bugs, measure recall")
    ap.add_argument("--rules", default="", help="mutation mode: only these rules (comma-separated names)")
    ap.add_argument("--repos", default="", help="only these repos (comma-separated owner__name or owner/name)")
    ap.add_argument("--cap", type=int, default=30, help="mutation mode: at most this many mutants per rule per repo")
    ap.add_argument("--jobs", type=int, default=0, help="doctor --jobs for the findings run (default: doctor's)")
    args = ap.parse_args(argv)
    corpus = os.path.abspath(args.corpus)
    repos = corpus_repos(corpus)
    if args.repos:
        want = {r.replace("/", "__") for r in args.repos.split(",") if r}
        repos = [r for r in repos if r in want]
    if args.mutate:
        import mutate  # noqa: E402  (benchmarks/realworld/mutate.py)

        rules = [r for r in args.rules.split(",") if r] or list(mutate.RULES)
        return mutate.run(corpus, repos, rules, args.cap, MUTANTS, doctor_provenance())
    config = os.path.join(corpus, "doctor.toml")
    extra = ["--jobs", str(args.jobs)] if args.jobs else []
    report = run_doctor(repos, corpus, extra, config if os.path.isfile(config) else None)
    if report.get("errors"):
        print(f"doctor reported {len(report['errors'])} file errors:")
        for e in report["errors"][:20]:
            print(f"  {e}")
    findings = normalise(report, corpus)
    with open(FINDINGS, "w", encoding="utf-8") as fh:
        json.dump({"doctor": doctor_provenance(), "summary": report.get("summary", {}), "findings": findings}, fh, indent=1)
        fh.write("\n")
    print(f"wrote {os.path.relpath(FINDINGS)}")
    return report_findings(findings, load_triage(), report.get("summary", {}), args.check)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
