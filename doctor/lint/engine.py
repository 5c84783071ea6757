"""The checking engine: read and parse each file once, run every enabled rule, suppress, sort, de-duplicate."""

from __future__ import annotations

import ast
import hashlib
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Iterable, Optional

from doctor.lint.config import Settings
from doctor.lint.context import FileContext
from doctor.core.findings import Finding, Severity
from doctor.lint.registry import Rule, lookup, select_rules, static_rules
from doctor.core.source import NotebookError, Source, decode_notebook, decode_python, text_problem, worth_parsing
from doctor.lint.suppress import is_ours, parse_suppressions
from doctor.lint.parts import PARTS_FROM_BYTES, Plan
from doctor.lint.workers import pool_map, usable_cores
from doctor.analysis.project import Consulted, recording

#: Files larger than this are skipped with a message (generated code, data dumps saved as .py).
MAX_FILE_BYTES = 20 * 1024 * 1024


#: Why a file could not be checked (``FileResult.error_kind``). The first three fail the run like a syntax
#: error (exit 1); an internal error is a doctor bug (exit 2); ``incomplete`` (a rule gave up on code nested
#: too deeply, a file over the size limit) is reported without changing the exit code.
UNREADABLE, NOT_PYTHON, INVALID_NOTEBOOK, INTERNAL, INCOMPLETE = "unreadable", "not-python", "invalid-notebook", "internal", "incomplete"
#: A path given on the command line that does not exist: a usage error (exit 2), the other paths still checked.
MISSING = "missing"
FAILING_ERRORS = (UNREADABLE, NOT_PYTHON, INVALID_NOTEBOOK)


@dataclass
class FileResult:
    path: str
    findings: list[Finding] = field(default_factory=list)
    #: A message when the file could not be checked at all (unreadable, not a notebook...).
    error: Optional[str] = None
    #: What kind of problem ``error`` is (one of the constants above).
    error_kind: Optional[str] = None
    skipped: bool = False
    #: Why the file was skipped without being parsed (no PyTorch code, a notebook in another language).
    skip_reason: str = ""
    rule_seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    #: SHA-256 of the bytes that were checked: the fixer reuses these findings only for the same bytes.
    digest: str = ""
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

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.files if r.skipped)

    @property
    def checked(self) -> int:
        """Files that were parsed and checked (not skipped, not lost to an error)."""
        return sum(1 for r in self.files if not r.skipped and (not r.error or r.error_kind == INCOMPLETE))

    def has_error(self, *kinds: str) -> bool:
        return any(r.error and r.error_kind in kinds for r in self.files)

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


def _fail(result: FileResult, kind: str, message: str) -> FileResult:
    result.findings = []
    result.error, result.error_kind = message, kind
    return result


def check_source(path: str, data: bytes, rules: list[type[Rule]], settings: Settings, *, timing: bool = False, jobs: int = 1) -> FileResult:
    """Check one file's bytes. Never raises: whatever goes wrong in reading, decoding, parsing or checking
    this file becomes a finding or its ``error``, so that one file never costs the others' findings.

    ``jobs``: processes a big file's parts may use (never more than one inside a worker)."""
    result = FileResult(path=path, digest=hashlib.sha256(data).hexdigest())
    stage = "decoding"
    try:
        notebook = path.endswith(".ipynb")
        problem = None if notebook else text_problem(data)
        if problem:
            return _fail(result, NOT_PYTHON, problem)
        if not notebook and not worth_parsing(data):
            result.skipped, result.skip_reason = True, "no PyTorch code"
            return result
        try:
            source = read_source(path, data)
        except NotebookError as exc:
            return _fail(result, INVALID_NOTEBOOK, str(exc))
        if source.language is not None and "python" not in source.language:
            result.skipped, result.skip_reason = True, f"a {source.language} notebook"
            return result
        if not notebook and len(data) > PARTS_FROM_BYTES:
            stage = "checking (in parts)"
            if _check_in_parts(result, path, source, rules, settings, timing, jobs):
                return result
        stage = "parsing"
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
        stage = "checking"
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
                    result.error, result.error_kind = f"rule {rule_cls.name} gave up: code nested too deeply", INCOMPLETE
                except Exception as exc:  # a rule bug must not lose the other rules' findings
                    result.error = f"internal error in rule {rule_cls.name}: {type(exc).__name__}: {exc}"
                    result.error_kind = INTERNAL
                if timing:
                    result.rule_seconds[rule_cls.name] = time.perf_counter() - start
        _keep_consulted(result, path, consulted)
        stage = "applying suppressions to"
        result.findings = _apply_suppressions(ctx, _dedupe(found), rules)
        return result
    except Exception as exc:  # noqa: BLE001 - a doctor bug on this file: report it for this file and go on
        return _fail(result, INTERNAL, f"internal error while {stage} the file: {type(exc).__name__}: {exc}")


def _syntax_finding(path: str, source: Source, exc: BaseException) -> Finding:
    line = getattr(exc, "lineno", None) or 1
    col = getattr(exc, "offset", None) or 1
    msg = getattr(exc, "msg", None) or str(exc)
    node = ast.Pass(lineno=line, col_offset=max(col - 1, 0), end_lineno=line, end_col_offset=max(col - 1, 0))
    ctx = FileContext(path, source, ast.Module(body=[], type_ignores=[]))
    return ctx.make_finding(_syntax_rule(), node, f"file could not be parsed: {msg}")


def _keep_consulted(result: FileResult, path: str, consulted: Consulted) -> None:
    """What the analysis read of other files, for the cache (the file itself does not count)."""
    consulted.files.discard(os.path.normpath(os.path.abspath(path)))
    if result.consulted is not None:
        consulted.files |= result.consulted.files
        consulted.roots |= result.consulted.roots
    result.consulted = consulted if consulted.files or consulted.roots else None


@dataclass
class _PartResult:
    findings: list[Finding] = field(default_factory=list)
    error: Optional[str] = None
    error_kind: Optional[str] = None
    rule_seconds: dict[str, float] = field(default_factory=dict)
    #: The part did not parse (the file may not either, or our cut was wrong).
    unparsable: bool = False
    #: Other files the analysis of this part read.
    consulted: Optional[Consulted] = None


def _check_part(path: str, part: Source, rules: list[type[Rule]], timing: bool) -> _PartResult:
    out = _PartResult()
    try:
        tree = parse(part)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        out.unparsable = True
        return out
    ctx = FileContext(path, part, tree)
    with recording() as consulted:
        for rule_cls in rules:
            start = time.perf_counter() if timing else 0.0
            try:
                out.findings.extend(replace(f, fix=None) for f in rule_cls().check(ctx))
            except RecursionError:
                out.error, out.error_kind = f"rule {rule_cls.name} gave up: code nested too deeply", INCOMPLETE
            except Exception as exc:  # a rule bug must not lose the other rules' findings
                out.error, out.error_kind = f"internal error in rule {rule_cls.name}: {type(exc).__name__}: {exc}", INTERNAL
            if timing:
                out.rule_seconds[rule_cls.name] = out.rule_seconds.get(rule_cls.name, 0.0) + time.perf_counter() - start
    out.consulted = consulted
    return out


def _part_worker(args: tuple[str, Source, list[str], bool]) -> _PartResult:
    path, part, names, timing = args
    table = static_rules()
    return _check_part(path, part, [table[n] for n in names], timing)


def _check_in_parts(
    result: FileResult, path: str, source: Source, rules: list[type[Rule]], settings: Settings, timing: bool, jobs: int = 1
) -> bool:
    """Check a big file one part at a time (``doctor.lint.parts``), the parts in ``jobs`` processes; fill
    ``result`` and return True, or return False when the whole file must be checked at once after all (a part
    did not parse but the file does)."""
    plan = Plan(source.text)
    ignored = settings.ignored_for(path)
    selected = [r for r in rules if not r.whole_file and not (ignored and _rule_ignored(r, ignored))]
    parts = (replace(source, text=text) for text in plan.parts())
    table = static_rules()
    if jobs > 1 and all(table.get(r.name) is r for r in selected):
        names = [r.name for r in selected]
        done: Iterable[_PartResult] = pool_map(_part_worker, ((path, part, names, timing) for part in parts), jobs)
    else:
        done = (_check_part(path, part, selected, timing) for part in parts)
    found: list[Finding] = []
    for part_result in done:
        if part_result.unparsable:
            try:
                parse(source)  # is the file itself broken, or only our cut?
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                rule = _syntax_rule()
                result.findings = [_syntax_finding(path, source, exc)] if any(r is rule for r in rules) else []
                return True
            return False
        found.extend(part_result.findings)
        if part_result.consulted is not None:
            _keep_consulted(result, path, part_result.consulted)
        if part_result.error and result.error_kind != INTERNAL:
            result.error, result.error_kind = part_result.error, part_result.error_kind
        for name, sec in part_result.rule_seconds.items():
            result.rule_seconds[name] = result.rule_seconds.get(name, 0.0) + sec
    whole = FileContext(path, source, ast.Module(body=[], type_ignores=[]))
    result.findings = _apply_suppressions(whole, _dedupe(found), rules, comments=plan.comments)
    return True


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


def _apply_suppressions(ctx: FileContext, findings: list[Finding], rules: list[type[Rule]], comments=None) -> list[Finding]:
    suppressions = parse_suppressions(ctx.source.text, comments)
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


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def check_file(path: str, rules: list[type[Rule]], settings: Settings, *, timing: bool = False, jobs: int = 1) -> FileResult:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            return FileResult(path=path, error=f"skipped: file is {size / 1e6:.0f} MB (limit {MAX_FILE_BYTES // 2**20} MiB)", error_kind=INCOMPLETE)
        data = read_bytes(path)
    except OSError as exc:
        return FileResult(path=path, error=f"cannot read: {exc.strerror or exc}", error_kind=UNREADABLE)
    except Exception as exc:  # noqa: BLE001 - never lose the other files for this one
        return FileResult(path=path, error=f"internal error while reading the file: {type(exc).__name__}: {exc}", error_kind=INTERNAL)
    return check_source(path, data, rules, settings, timing=timing, jobs=jobs)


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
    jobs = jobs or usable_cores()
    if jobs > 1 and len(todo) >= 32:
        names = [r.name for r in rules]
        chunks = _balanced_chunks(todo, jobs)
        for batch in pool_map(_worker, [(c, names, settings, timing) for c in chunks], min(jobs, len(chunks))):
            for r in batch:
                results[r.path] = r
    else:
        for p in todo:
            results[p] = check_file(p, rules, settings, timing=timing, jobs=jobs)
    if cache is not None:
        for p in todo:
            cache.put(p, results[p])
    return RunResult(files=[results[p] for p in paths])


def failing(findings: Iterable[Finding], fail_on: Severity) -> bool:
    return any(f.severity.rank >= fail_on.rank for f in findings)
