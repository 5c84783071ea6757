"""One reporter layer for every output format, static and runtime findings alike."""

from __future__ import annotations

import json
from collections import Counter
from typing import Iterable, Optional

from doctor import __version__
from doctor.core.findings import Finding, Severity
from doctor.core.page import Page
from doctor.core.page import render as render_page

FORMATS = ("text", "json", "github", "sarif")

_COLOURS = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "blue"}


def location(f: Finding) -> str:
    if f.cell is not None:
        return f"{f.path}:cell {f.cell + 1}:{f.line}:{f.column}"
    return f"{f.path}:{f.line}:{f.column}"


def render_text(findings: list[Finding], errors: list[tuple[str, str]], *, colour: bool, files: int, fixable_hint: bool = True) -> str:
    import click

    def style(text: str, **kw) -> str:
        return click.style(text, **kw) if colour else text

    out = []
    for f in findings:
        loc = style(location(f), bold=True)
        code = style(f.code, fg=_COLOURS[f.severity], bold=True)
        fix = style(" [*]", fg="cyan") if f.fix is not None else ""
        out.append(f"{loc}: {code}{fix} {f.message} [{f.rule}]")
    for path, message in errors:
        out.append(f"{style(path, bold=True)}: {style('error', fg='red', bold=True)}: {message}")
    counts = Counter(f.severity for f in findings)
    if findings:
        parts = [f"{counts[s]} {s.value}{'s' if counts[s] != 1 else ''}" for s in (Severity.ERROR, Severity.WARNING, Severity.INFO) if counts[s]]
        summary = f"Found {len(findings)} problem{'s' if len(findings) != 1 else ''} ({', '.join(parts)}) in {files} file{'s' if files != 1 else ''} checked."
        n_safe = sum(1 for f in findings if f.fix is not None and f.fix.applicability.value == "safe")
        n_unsafe = sum(1 for f in findings if f.fix is not None and f.fix.applicability.value == "unsafe")
        if fixable_hint and n_safe:
            summary += f"\n[*] {n_safe} fixable with `doctor check --fix`" + (f" ({n_unsafe} more with `--fix --unsafe-fixes`)." if n_unsafe else ".")
        elif fixable_hint and n_unsafe:
            summary += f"\n[*] {n_unsafe} fixable with `doctor check --fix --unsafe-fixes` (these change training numerics: review the diff)."
        out.append(summary)
    elif errors:
        out.append(f"No problems found, but {len(errors)} file{'s' if len(errors) != 1 else ''} could not be checked ({files} checked).")
    else:
        out.append(style(f"All checks passed ({files} file{'s' if files != 1 else ''} checked).", fg="green"))
    return "\n".join(out)


def render_json(findings: list[Finding], errors: list[tuple[str, str]], *, files: int, extra: Optional[dict] = None) -> str:
    payload = {
        "version": __version__,
        "findings": [f.to_dict() for f in findings],
        "errors": [{"path": p, "message": m} for p, m in errors],
        "summary": {
            "files": files,
            "findings": len(findings),
            **{s.value: sum(1 for f in findings if f.severity is s) for s in Severity},
        },
    }
    if extra:
        payload.update(extra)
    return json.dumps(payload, indent=2)


def _gh_escape(value: str, prop: bool = False) -> str:
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        value = value.replace(":", "%3A").replace(",", "%2C")
    return value


def render_github(findings: list[Finding], errors: list[tuple[str, str]]) -> str:
    """GitHub Actions workflow commands: each finding becomes an annotation on the pull request."""
    level = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    out = []
    for f in findings:
        props = (
            f"file={_gh_escape(f.path, True)},line={f.line},col={f.column},"
            f"endLine={f.end_line},endColumn={f.end_column},title={_gh_escape(f'{f.code} {f.rule}', True)}"
        )
        out.append(f"::{level[f.severity]} {props}::{_gh_escape(f'{f.code} {f.message}')}")
    for path, message in errors:
        out.append(f"::error file={_gh_escape(path, True)},title=doctor::{_gh_escape(message)}")
    return "\n".join(out)


def render_sarif(findings: list[Finding], errors: list[tuple[str, str]], pages: list[Page]) -> str:
    """SARIF 2.1.0 with rule metadata (``pages``: every rule's and check's page), for GitHub code scanning
    and other viewers."""
    index = {page.name: i for i, page in enumerate(pages)}
    rules = []
    for info in pages:
        rule: dict = {
            "id": info.code,
            "name": "".join(w.capitalize() for w in info.name.split("-")),
            "shortDescription": {"text": info.summary},
            "helpUri": f"https://github.com/torch-doctor/torch-doctor/blob/main/docs/rules.md#{info.name}",
            "defaultConfiguration": {"level": _sarif_level(info.severity), "enabled": info.default_enabled},
            "properties": {"tags": [info.kind], "doctorName": info.name},
            "fullDescription": {"text": info.why},
            "help": {"text": render_page(info), "markdown": render_page(info)},
        }
        rules.append(rule)
    results = []
    for f in findings:
        result = {
            "ruleId": f.code,
            "level": _sarif_level(f.severity.value),
            "message": {"text": f.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.path.replace("\\", "/")},
                        "region": {
                            "startLine": f.line,
                            "startColumn": f.column,
                            "endLine": f.end_line,
                            "endColumn": f.end_column,
                        },
                    }
                }
            ],
            "partialFingerprints": {"doctor/v1": f.fingerprint} if f.fingerprint else {},
        }
        if f.rule in index:
            result["ruleIndex"] = index[f.rule]
        if f.cell is not None:
            result["properties"] = {"cell": f.cell}
        results.append(result)
    notifications = [
        {"level": "error", "message": {"text": m}, "locations": [{"physicalLocation": {"artifactLocation": {"uri": p}}}]}
        for p, m in errors
    ]
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "doctor",
                        "fullName": "doctor, the training doctor for PyTorch",
                        "version": __version__,
                        "informationUri": "https://github.com/torch-doctor/torch-doctor",
                        "rules": rules,
                    }
                },
                "results": results,
                "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notifications}],
            }
        ],
    }
    return json.dumps(sarif, indent=2)


def _sarif_level(severity: str) -> str:
    return {"error": "error", "warning": "warning", "info": "note"}[severity]


def render_statistics(findings: Iterable[Finding], rule_seconds: Optional[dict[str, float]] = None) -> str:
    counts = Counter((f.code, f.rule) for f in findings)
    fixable = Counter((f.code, f.rule) for f in findings if f.fix is not None)
    lines = []
    for (code, rule), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        mark = "[*]" if fixable[(code, rule)] else "   "
        lines.append(f"{n:>5}  {code:<7} {mark} {rule}")
    if rule_seconds:
        lines.append("")
        lines.append("Slowest rules (total seconds over all files):")
        for name, sec in sorted(rule_seconds.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  {sec:8.4f}s  {name}")
    return "\n".join(lines)
