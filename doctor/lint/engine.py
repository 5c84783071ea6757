"""The checking engine: read and parse each file once, run every enabled rule, suppress, sort, de-duplicate."""

from __future__ import annotations

import ast
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional

from doctor.lint.config import Settings
from doctor.lint.context import FileContext
from doctor.core.findings import Finding, Severity
from doctor.lint.registry import Rule, lookup, select_rules, static_rules
from doctor.core.source import Source, decode_notebook, decode_python, worth_parsing
from doctor.lint.suppress import is_ours, parse_suppressions
from doctor.analysis.project import Consulted, recording

#: Files larger than this are skipped with a message (generated code, data dumps saved as .py).
MAX_FILE_BYTES = 20 * 1024 * 1024


@dataclass
class FileResult:
    path: str
    findings: list[Finding] = field(default_factory=list)
    #: A message when the file could not be checked at all (unreadable, not a notebook...).
    error: Optional[str] = None
    skipped: bool = False
    rule_seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    #: Other files (and whole project folders) the analysis read: the cache re-checks the file when they change.
    consulted: Optional[Consulted] = None


@dataclass
class RunResult:
    files: list[FileResult]

    @property
    def findings(self) -> list[Finding]:
        out = [f for r in self.files for f in r.findings]
        return sorted(set(out), key=lambda f: f.sort_key)

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [(r.path, r.error) for r in self.files if r.error]

    def rule_seconds(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for r in self.files:
            for name, sec in r.rule_seconds.items():
                total[name] = total.get(name, 0.0) + sec
        return total


def _syntax_rule() -> type[Rule]:
    rule = lookup("syntax-error")
    assert rule is not None
    return rule


def read_source(path: str, data: bytes) -> Source:
    if path.endswith(".ipynb"):
        return decode_notebook(data)
    return decode_python(data)


def parse(source: Source) -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences etc. are not our business
        return ast.parse(source.text)


def check_source(path: str, data: bytes, rules: list[type[Rule]], settings: Settings, *, timing: bool = False) -> FileResult:
    """Check one file's bytes. Never raises for bad input: problems become a finding or ``error``."""
    result = FileResult(path=path)
    if not path.endswith(".ipynb") and not worth_parsing(data):
        result.skipped = True
        return result
    try:
        source = read_source(path, data)
    except ValueError as exc:
        result.error = str(exc)
        return result
    try:
        tree = parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        rule = _syntax_rule()
        if any(r is rule for r in rules):
            line = getattr(exc, "lineno", None) or 1
            col = getattr(exc, "offset", None) or 1
            msg = getattr(exc, "msg", None) or str(exc)
            node = ast.Pass(lineno=line, col_offset=max(col - 1, 0), end_lineno=line, end_col_offset=max(col - 1, 0))
            ctx = FileContext(path, source, ast.Module(body=[], type_ignores=[]))
            result.findings.append(ctx.make_finding(rule, node, f"file could not be parsed: {msg}"))
        return result
    ctx = FileContext(path, source, tree)
    ignored = settings.ignored_for(path)
    found: list[Finding] = []
    with recording() as consulted:
        for rule_cls in rules:
            if ignored and _rule_ignored(rule_cls, ignored):
                continue
            start = time.perf_counter() if timing else 0.0
            try:
                found.extend(rule_cls().check(ctx))
            except RecursionError:
                result.error = f"rule {rule_cls.name} gave up: code nested too deeply"
            except Exception as exc:  # a rule bug must not lose the other rules' findings
                result.error = f"internal error in rule {rule_cls.name}: {type(exc).__name__}: {exc}"
            if timing:
                result.rule_seconds[rule_cls.name] = time.perf_counter() - start
    consulted.files.discard(os.path.normpath(os.path.abspath(path)))
    result.consulted = consulted if consulted.files or consulted.roots else None
    result.findings = _apply_suppressions(ctx, _dedupe(found), rules)
    return result


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per rule and place. A loop seen both in its own function and inlined into a caller is
    analysed twice; keep the report that carries a fix."""
    best: dict[tuple, Finding] = {}
    for f in findings:
        key = (f.rule, f.cell, f.line, f.column)
        if key not in best or (best[key].fix is None and f.fix is not None):
            best[key] = f
    return list(best.values())


def _rule_ignored(rule: type[Rule], selectors: tuple[str, ...]) -> bool:
    return any(s.upper() == "ALL" or s.lower() == rule.name or rule.code.upper().startswith(s.upper()) for s in selectors)


def _apply_suppressions(ctx: FileContext, findings: list[Finding], rules: list[type[Rule]]) -> list[Finding]:
    suppressions = parse_suppressions(ctx.source.text)
    if not suppressions:
        return findings
    kept = []
    for f in findings:
        # Suppressions are looked up on the finding's line in the joined program, not the cell line.
        line = _program_line(ctx, f)
        hit = next((s for s in suppressions.get(line, []) if s.covers(f.rule, f.code)), None)
        if hit is None:
            kept.append(f)
        else:
            hit.used.add(f.rule)
            hit.used.add(f.code)
    unused_rule = lookup("unused-suppression")
    if unused_rule is not None and any(r is unused_rule for r in rules):
        known = {r.name for r in static_rules().values()} | {r.code.lower() for r in static_rules().values()}
        for line, items in suppressions.items():
            for s in items:
                if s.form == "noqa" and not s.codes:
                    continue  # a bare noqa may be meant for another linter
                stale = [c for c in s.codes if is_ours(c, known) and c.lower() not in {u.lower() for u in s.used}]
                if s.form == "doctor" and not s.codes and not s.used:
                    stale = ["all"]
                if stale:
                    node = ast.Pass(lineno=line, col_offset=s.column - 1, end_lineno=line, end_col_offset=s.column - 1)
                    kept.append(ctx.make_finding(unused_rule, node, f"unused suppression ({', '.join(stale)})"))
    return kept


def _program_line(ctx: FileContext, f: Finding) -> int:
    if f.cell is None:
        return f.line
    for index, first, _ in ctx.source.cells:
        if index == f.cell:
            return first + f.line - 1
    return f.line


def check_file(path: str, rules: list[type[Rule]], settings: Settings, *, timing: bool = False) -> FileResult:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            return FileResult(path=path, error=f"skipped: file is {size / 1e6:.0f} MB (limit {MAX_FILE_BYTES // 2**20} MiB)")
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return FileResult(path=path, error=f"cannot read: {exc.strerror or exc}")
    return check_source(path, data, rules, settings, timing=timing)


def _usable_cores() -> int:
    """Cores this process may run on (a CI container often gets fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _balanced_chunks(paths: list[str], jobs: int) -> list[list[str]]:
    """Work units for the pool, largest first, each about 1/(8*jobs) of the total bytes.

    One huge file (a 5000-line trainer) would otherwise land in a chunk that finishes long after the others:
    largest-first with small units keeps all cores busy until the end, and units of several small files keep
    the per-task overhead low on big trees.
    """
    sizes = {}
    for p in paths:
        try:
            sizes[p] = os.path.getsize(p)
        except OSError:
            sizes[p] = 0
    ordered = sorted(paths, key=lambda p: -sizes[p])
    target = max(sum(sizes.values()) // (jobs * 8), 1)
    chunks: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for p in ordered:
        current.append(p)
        current_size += sizes[p]
        if current_size >= target:
            chunks.append(current)
            current, current_size = [], 0
    if current:
        chunks.append(current)
    return chunks


def _worker(args: tuple[list[str], list[str], Settings, bool]) -> list[FileResult]:
    paths, names, settings, timing = args
    table = static_rules()
    rules = [table[n] for n in names]
    return [check_file(p, rules, settings, timing=timing) for p in paths]


def check_files(
    paths: list[str],
    settings: Settings,
    rules: Optional[list[type[Rule]]] = None,
    *,
    jobs: Optional[int] = None,
    timing: bool = False,
    cache=None,
) -> RunResult:
    """Check files, in parallel when there are enough of them to pay for the worker start-up."""
    if rules is None:
        rules = select_rules(settings.select, settings.ignore, settings.extend_select)
    results: dict[str, FileResult] = {}
    todo = []
    for p in paths:
        hit = cache.get(p) if cache is not None else None
        if hit is not None:
            results[p] = hit
        else:
            todo.append(p)
    jobs = jobs or _usable_cores()
    if jobs > 1 and len(todo) >= 32:
        # Imported here: a pre-commit run on a few files never pays for multiprocessing's imports.
        from concurrent.futures import ProcessPoolExecutor

        names = [r.name for r in rules]
        chunks = _balanced_chunks(todo, jobs)
        with ProcessPoolExecutor(max_workers=min(jobs, len(chunks))) as pool:
            for batch in pool.map(_worker, [(c, names, settings, timing) for c in chunks]):
                for r in batch:
                    results[r.path] = r
    else:
        for p in todo:
            results[p] = check_file(p, rules, settings, timing=timing)
    if cache is not None:
        for p in todo:
            cache.put(p, results[p])
    return RunResult(files=[results[p] for p in paths])


def failing(findings: Iterable[Finding], fail_on: Severity) -> bool:
    return any(f.severity.rank >= fail_on.rank for f in findings)
