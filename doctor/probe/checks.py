"""The runtime-check contract: metadata (``RuntimeCheck``), a verdict (``CheckResult``), and running them all.

Each check is one module in ``rules/runtime/`` (installed as ``doctor.rules.runtime``) with a module-level
``CHECK = RuntimeCheck(...)`` and ``evaluate(run: ProbeRun) -> CheckResult``. The common skips live here, not
in every check: a check that needs optimizer steps (``needs_steps``, the default) is skipped with the reason
when none was observed, a recipe check (``recipe=True``) is only evaluated when ``--recipe`` asked for it, a
cross-rank check (``distributed=True``) only on a ``--nproc-per-node`` run, and a check raises
``Skip(reason)`` (or calls ``require``) when it has nothing to judge.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from doctor.core.findings import Finding, Severity
from doctor.probe.trace import ProbeRun

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
STATUSES = (PASS, WARN, FAIL, SKIP)


class Skip(Exception):
    """Raised by a check with nothing to judge; the reason becomes the ``skip`` summary."""

    def __init__(self, reason: str, evidence: Optional[dict[str, Any]] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence or {}


def require(condition: Any, reason: str, evidence: Optional[dict[str, Any]] = None) -> None:
    """Skip the check with ``reason`` unless ``condition`` holds."""
    if not condition:
        raise Skip(reason, evidence)


@dataclass(frozen=True)
class RuntimeCheck:
    """What `doctor rules --all` and `doctor explain` show for a runtime check."""

    name: str
    code: str
    summary: str
    #: Skipped ("no optimizer step observed") when the run made no step.
    needs_steps: bool = True
    #: A step of Karpathy's recipe: evaluated only when ``--recipe`` names it.
    recipe: bool = False
    #: A cross-rank check: evaluated once on the merged run of ``--nproc-per-node`` (``run.ranks``), never on
    #: a single-process run. The other checks are evaluated on each rank and merged (``doctor.probe.ranks``).
    distributed: bool = False

    def result(self, status: str, summary: str, evidence: Optional[dict[str, Any]] = None, advice: str = "",
               findings: Optional[list[Finding]] = None) -> "CheckResult":
        return result(self, status, summary, evidence, advice, findings)

    def finding(self, path: Optional[str], line: Optional[int], message: str, severity: Severity = Severity.ERROR,
                evidence: Optional[dict[str, Any]] = None) -> list[Finding]:
        return finding_at(self, path, line, message, severity, evidence)


@dataclass
class CheckResult:
    """The verdict of one check on one run."""

    name: str
    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    advice: str = ""
    findings: list[Finding] = field(default_factory=list)
    code: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "code": self.code,
            "status": self.status,
            "summary": self.summary,
            "evidence": self.evidence,
            "advice": self.advice,
            "findings": [f.to_dict() for f in self.findings],
        }


def result(check: RuntimeCheck, status: str, summary: str, evidence: Optional[dict[str, Any]] = None,
           advice: str = "", findings: Optional[list[Finding]] = None) -> CheckResult:
    """Build a CheckResult for ``check`` (keeps the name and code in one place)."""
    assert status in STATUSES, status
    return CheckResult(name=check.name, code=check.code, status=status, summary=summary,
                       evidence=evidence or {}, advice=advice, findings=findings or [])


def finding_at(check: RuntimeCheck, path: Optional[str], line: Optional[int], message: str,
               severity: Severity = Severity.ERROR, evidence: Optional[dict[str, Any]] = None) -> list[Finding]:
    """A runtime finding at a source line, or nothing when the line is unknown."""
    if not path or not line:
        return []
    try:
        shown = os.path.relpath(path)
        if shown.startswith(".."):
            shown = path
    except ValueError:  # another drive on Windows
        shown = path
    return [Finding(path=shown, line=int(line), column=1, end_line=int(line), end_column=1, rule=check.name,
                    code=check.code, severity=severity, message=message, origin="runtime", evidence=evidence or {})]


def load_checks() -> list[tuple[RuntimeCheck, Callable[[ProbeRun], CheckResult]]]:
    """Every runtime check module, in code order."""
    pkg = importlib.import_module("doctor.rules.runtime")
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"doctor.rules.runtime.{info.name}")
        check = getattr(module, "CHECK", None)
        if isinstance(check, RuntimeCheck) and hasattr(module, "evaluate"):
            found.append((check, module.evaluate))
    return sorted(found, key=lambda c: c[0].code)


def evaluate_one(check: RuntimeCheck, evaluate: Callable[[ProbeRun], CheckResult], run: ProbeRun) -> CheckResult:
    """One check on one run, with the common skips; a check that breaks reports ``skip`` with the reason."""
    if check.needs_steps and run.steps_observed == 0:
        return result(check, SKIP, "no optimizer step observed (see training-loop)")
    try:
        res = evaluate(run)
    except Skip as skip:
        res = result(check, SKIP, skip.reason, skip.evidence)
    except Exception as exc:  # a bug in one check must not hide the others
        res = result(check, SKIP, f"the check could not evaluate this run ({type(exc).__name__}: {exc})")
    res.code = res.code or check.code
    return res


def evaluate_all(run: ProbeRun) -> list[CheckResult]:
    """Every check that applies to a single-process ``run`` (recipe checks only when requested), in code order."""
    wanted = set(run.recipe_requested)
    return [evaluate_one(check, evaluate, run) for check, evaluate in load_checks()
            if (not check.recipe or check.name in wanted) and not check.distributed]


def median(values: list[float]) -> Optional[float]:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def fmt(x: Optional[float]) -> str:
    """Numbers for one-line summaries: 3 significant digits, scientific when tiny or huge."""
    if x is None:
        return "n/a"
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.3g}"
