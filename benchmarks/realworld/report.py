"""Refresh the generated tables of benchmarks/REALWORLD.md from repos.json, the corpus manifest, findings.json,
triage.json and mutants.json:

    python benchmarks/realworld/report.py

Only the text between ``<!-- BEGIN auto:NAME -->`` and ``<!-- END auto:NAME -->`` is rewritten; the analysis
around it is written by hand.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
DOC = os.path.join(REPO_ROOT, "benchmarks", "REALWORLD.md")
MANIFEST = os.path.join(REPO_ROOT, "benchmarks", "corpus", "realworld", "manifest.json")


def _load(path: str, default=None):
    if not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def where(rec: dict) -> str:
    cell = f" cell {rec['cell']}" if rec.get("cell") is not None else ""
    return f"{rec['repo'].replace('/', '__')}/{rec['path']}{cell}:{rec['line']}"


def corpus_table() -> str:
    spec = _load(os.path.join(HERE, "repos.json"))
    manifest = {m["name"]: m for m in (_load(MANIFEST, {}) or {}).get("repos", [])}
    rows = ["| repo | commit | files (.py / .ipynb) | lines | laid out |", "|---|---|---|---|---|"]
    tf = tl = 0
    for e in spec["repos"]:
        m = manifest.get(e["name"])
        files = f"{m['files']} ({m['py']} / {m['ipynb']})" if m else "not laid out"
        lines = f"{m['lines']:,}" if m else "-"
        if m:
            tf += m["files"]
            tl += m["lines"]
        inc = ", ".join(f"`{p}`" for p in e["include"]) if e["include"] != [""] else "whole repo"
        if e.get("exclude"):
            inc += " minus " + ", ".join(f"`{p}`" for p in e["exclude"])
        rows.append(f"| {e['name']} | `{e['commit'][:12]}` | {files} | {lines} | {inc} |")
    rows.append(f"| **total** ({len(spec['repos'])} repos) | | **{tf:,}** | **{tl:,}** | |")
    return "\n".join(rows)


def verdict_counts(findings: list[dict], triage: dict):
    verdict_of = {r["key"]: triage.get(r["key"], {}).get("verdict") for r in findings}
    return verdict_of


def rules_table(findings: list[dict], triage: dict) -> str:
    verdict_of = verdict_counts(findings, triage)
    by_rule = collections.OrderedDict()
    for r in sorted(findings, key=lambda r: r["code"]):
        by_rule.setdefault((r["code"], r["rule"], r["severity"]), []).append(r)
    rows = ["| code | rule | severity | findings | true | defensible | false alarm | untriaged |",
            "|---|---|---|---|---|---|---|---|"]
    for (code, rule, sev), recs in by_rule.items():
        c = collections.Counter(verdict_of[r["key"]] for r in recs)
        rows.append(f"| {code} | {rule} | {sev} | {len(recs)} | {c['true']} | {c['defensible']} | {c['false']} | {c[None]} |")
    c = collections.Counter(verdict_of.values())
    rows.append(f"| | **all** | | **{len(findings)}** | **{c['true']}** | **{c['defensible']}** | **{c['false']}** | **{c[None]}** |")
    return "\n".join(rows)


def precision_block(findings: list[dict], triage: dict) -> str:
    verdict_of = verdict_counts(findings, triage)

    def figures(recs):
        c = collections.Counter(verdict_of[r["key"]] for r in recs)
        judged = c["true"] + c["defensible"] + c["false"]
        if not judged:
            return "no findings"
        return (f"{len(recs)} findings: true {c['true']}, defensible {c['defensible']}, false alarm {c['false']}, "
                f"untriaged {c[None]}; precision true/(triaged) **{c['true'] / judged:.1%}**, "
                f"(true+defensible)/(triaged) **{(c['true'] + c['defensible']) / judged:.1%}**")

    rule_findings = [r for r in findings if r["rule"] != "syntax-error"]
    errors = [r for r in findings if r["severity"] == "error"]
    err_false = [r for r in errors if verdict_of[r["key"]] == "false"]
    lines = [
        f"- All findings: {figures(findings)}.",
        f"- Without `syntax-error` (a report about the tool, not a bug claim): {figures(rule_findings)}.",
        f"- Error severity only: {figures(errors)}.",
        f"- **False alarms at error severity: {len(err_false)}**"
        + (": " + "; ".join(f"`{where(r)}` ({r['rule']})" for r in err_false) if err_false else ""),
    ]
    return "\n".join(lines)


def findings_table(findings: list[dict], triage: dict) -> str:
    rows = ["| # | where (under benchmarks/corpus/realworld/) | rule | sev | verdict | why |", "|---|---|---|---|---|---|"]
    order = {"false": 0, "true": 1, "defensible": 2, None: 3}
    recs = sorted(findings, key=lambda r: (r["code"], order.get(triage.get(r["key"], {}).get("verdict"), 3), r["repo"], r["path"], r["cell"] or 0, r["line"]))
    for i, r in enumerate(recs, 1):
        t = triage.get(r["key"], {})
        v = t.get("verdict", "UNTRIAGED")
        v = "**false**" if v == "false" else v
        why = t.get("why", "")
        if t.get("class"):
            why = f"[{t['class']}] {why}"
        rows.append(f"| {i} | `{_cell(where(r))}` | {r['code']} {r['rule']} | {r['severity'][0]} | {v} | {_cell(why)} |")
    return "\n".join(rows)


def mutants_block(mutants: dict) -> str:
    recs = mutants.get("mutants", [])
    rules = list(dict.fromkeys(r["rule"] for r in recs))
    rows = ["| rule | sites run | caught | missed | not-a-bug | recall |", "|---|---|---|---|---|---|"]
    for rule in rules:
        c = collections.Counter(r["status"] for r in recs if r["rule"] == rule)
        d = c["caught"] + c["missed"]
        rows.append(f"| {rule} | {sum(c.values())} | {c['caught']} | {c['missed']} | {c['not-a-bug']} | "
                    f"{(c['caught'] / d if d else 0):.1%} |")
    rows += ["", "By shape of the site:", "", "| rule | shape | caught / (caught+missed) |", "|---|---|---|"]
    shapes = collections.defaultdict(collections.Counter)
    for r in recs:
        shapes[(r["rule"], r["shape"])][r["status"]] += 1
    for (rule, shape), c in sorted(shapes.items()):
        d = c["caught"] + c["missed"]
        if d:
            rows.append(f"| {rule} | {shape} | {c['caught']} / {d} |")
    rows += ["", "Missed mutants (the rule did not report the planted site):", "",
             "| rule | site (under benchmarks/corpus/realworld/) | mutation | shape |", "|---|---|---|---|"]
    for r in recs:
        if r["status"] == "missed":
            rows.append(f"| {r['rule']} | `{_cell(r['repo'].replace('/', '__') + '/' + r['site'])}` | {_cell(r['mutation'])} | {_cell(r['shape'])} |")
    rows += ["", "Not-a-bug mutants (excluded from recall):", "", "| rule | site | mutation | why it plants no bug |",
             "|---|---|---|---|"]
    for r in recs:
        if r["status"] == "not-a-bug":
            rows.append(f"| {r['rule']} | `{_cell(r['repo'].replace('/', '__') + '/' + r['site'])}` | {_cell(r['mutation'])} | {_cell(r['reason'])} |")
    inval = [r for r in recs if r["status"] == "invalid"]
    if inval:
        rows += ["", f"{len(inval)} mutants did not parse and were not run."]
    rows += ["", "Caught mutants:", "", "| rule | site | reported at |", "|---|---|---|"]
    for r in recs:
        if r["status"] == "caught":
            rows.append(f"| {r['rule']} | `{_cell(r['repo'].replace('/', '__') + '/' + r['site'])}` | {', '.join(r.get('reported_at', []))} |")
    return "\n".join(rows)


def provenance(findings_doc: dict, mutants: dict) -> str:
    def fmt(p):
        if not p:
            return "unknown"
        s = f"doctor {p.get('version', '?')}"
        if p.get("commit"):
            s += f" at `{p['commit'][:12]}`" + (" (with uncommitted changes)" if p.get("uncommitted_changes") else "")
        return s

    summ = findings_doc.get("summary", {})
    return (f"- findings.json: {fmt(findings_doc.get('doctor'))}; {summ.get('files', '?')} files checked.\n"
            f"- mutants.json: {fmt(mutants.get('doctor'))}; at most {mutants.get('cap_per_rule_per_repo', '?')} "
            "mutants per rule per repo.")


def main() -> int:
    fdoc = _load(os.path.join(HERE, "findings.json"), {"findings": []})
    findings = fdoc["findings"]
    triage = (_load(os.path.join(HERE, "triage.json"), {}) or {}).get("verdicts", {})
    mutants = _load(os.path.join(HERE, "mutants.json"), {"mutants": []})
    parts = {
        "provenance": provenance(fdoc, mutants),
        "corpus": corpus_table(),
        "rules": rules_table(findings, triage),
        "precision": precision_block(findings, triage),
        "findings": findings_table(findings, triage),
        "mutants": mutants_block(mutants),
    }
    with open(DOC, encoding="utf-8") as fh:
        text = fh.read()
    for name, body in parts.items():
        pat = re.compile(rf"(<!-- BEGIN auto:{name} -->\n).*?(<!-- END auto:{name} -->)", re.S)
        if not pat.search(text):
            print(f"REALWORLD.md has no auto:{name} section; skipped", file=sys.stderr)
            continue
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    with open(DOC, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"updated {os.path.relpath(DOC)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
