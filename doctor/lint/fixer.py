"""Applying fixes: rules' text edits, validated with Python's own parser, written atomically in the file's own form.

Rules describe a fix as edits on the text they checked (see ``doctor.core.findings.Edit``). For each file with
eligible fixes we re-read its bytes, re-check them, apply every non-overlapping eligible fix, validate the
result, and repeat (at most ``MAX_ROUNDS`` times) until no eligible fix is left, so one ``--fix`` converges
and a second changes nothing. Nothing is written when a result would not parse, when the fixes do not
converge, when the file changed on disk meanwhile, or when it is read-only: each case is a message naming
the file, and the findings stay (so the exit code still reflects them).

Notebooks: the edits are in the coordinates of the joined program (``doctor.core.source.decode_notebook``);
they are mapped back into each code cell's ``source`` and the notebook JSON is re-serialised in its own
layout, leaving outputs, execution counts and metadata alone.
"""

from __future__ import annotations

import ast
import bisect
import copy
import difflib
import hashlib
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from doctor.lint.config import Settings
from doctor.lint.engine import FileResult, RunResult, check_source, read_source
from doctor.core.findings import Applicability, Finding, Fix
from doctor.lint.registry import Rule, select_rules, static_rules
from doctor.core.source import Source, cell_source, decode_notebook, encode_notebook, encode_python

#: Rounds of check-and-fix per file. Overlapping fixes wait for the next round; a fix that keeps
#: re-appearing after this many rounds is a rule bug, and the file is left alone.
MAX_ROUNDS = 5

_NEWLINE = re.compile(r"\r\n|\r|\n")
# str.splitlines() (used for rule-facing ``ctx.lines``) breaks on these, the Python tokenizer does not:
# line numbers would disagree, so fixes on such files could land on the wrong line.
_ODD_LINE_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass
class FixOutcome:
    """What ``apply_fixes`` did, for the CLI to print."""

    messages: list[str] = field(default_factory=list)
    diff: str = ""
    changed_files: list[str] = field(default_factory=list)
    #: Fixes applied (or, without writing, that would be applied).
    applied: int = 0
    #: Unsafe fixes left because ``unsafe`` was off.
    unsafe_left: int = 0
    #: The run after fixing: the fixer's last check of every file it wrote, the original result of the others.
    result: Optional[RunResult] = None


@dataclass
class FileFix:
    """The fixed bytes of one file, before writing."""

    path: str
    original: bytes
    fixed: bytes
    applied: int = 0
    messages: list[str] = field(default_factory=list)
    #: Findings of the last check (of ``fixed``, or of ``original`` when nothing was applied).
    remaining: list[Finding] = field(default_factory=list)
    #: The last check itself (of ``fixed``), or None when the file could not be read.
    result: Optional[FileResult] = None
    _diff: Optional[str] = None

    @property
    def diff(self) -> str:
        """The unified diff of the fixes (computed when asked: it is not needed to write them)."""
        if self._diff is None:
            self._diff = _diff(self.path, self.original, self.fixed) if self.fixed != self.original else ""
        return self._diff


class _Refused(Exception):
    """A file must be left untouched; the message says why."""


def eligible(fix: Optional[Fix], unsafe: bool) -> bool:
    return fix is not None and (fix.applicability is Applicability.SAFE or unsafe)


#: Files with fixes from which on the fixes are computed in worker processes (when there are several cores).
PARALLEL_FROM = 8


def apply_fixes(
    result: RunResult,
    unsafe: bool = False,
    write: bool = True,
    *,
    rules: Optional[list[type[Rule]]] = None,
    settings: Optional[Settings] = None,
    jobs: Optional[int] = None,
) -> FixOutcome:
    """Apply the eligible fixes of every file in ``result``; with ``write=False`` only compute the diff.

    ``rules``/``settings`` should be those of the check that produced ``result`` (files are re-checked
    between rounds); by default the default rules plus every rule that reported a finding.
    """
    settings = settings or Settings()
    if rules is None:
        table = static_rules()
        rules = select_rules()
        rules += [table[n] for n in sorted({f.rule for f in result.findings}) if n in table and table[n] not in rules]
    outcome = FixOutcome()
    diffs: list[str] = []
    todo: list[FileResult] = []
    for file_result in result.files:
        if file_result.error or not any(f.fix is not None for f in file_result.findings):
            continue
        if not any(eligible(f.fix, unsafe) for f in file_result.findings):
            outcome.unsafe_left += _unsafe_count(file_result.findings, unsafe)
            continue
        todo.append(file_result)
    final = {r.path: r for r in result.files}
    for done in _fix_all(todo, rules, settings, unsafe, jobs):
        outcome.messages.extend(done.messages)
        outcome.unsafe_left += _unsafe_count(done.remaining, unsafe)
        if done.fixed == done.original:
            continue
        if write and not _write_back(done, outcome.messages):
            continue
        outcome.applied += done.applied
        outcome.changed_files.append(done.path)
        if not write:
            diffs.append(done.diff)
        if done.result is not None:
            final[done.path] = done.result
    outcome.diff = "".join(diffs)
    outcome.result = RunResult(files=[final[r.path] for r in result.files])
    return outcome


def _fix_all(todo: list[FileResult], rules: list[type[Rule]], settings: Settings, unsafe: bool, jobs: Optional[int]) -> list[FileFix]:
    """``fix_file`` for each file, in worker processes when there are many and the rules are the registered ones."""
    from doctor.lint.workers import usable_cores

    jobs = jobs or usable_cores()
    table = static_rules()
    registered = all(table.get(r.name) is r for r in rules)
    if jobs > 1 and len(todo) >= PARALLEL_FROM and registered:
        from doctor.lint.workers import pool_map

        names = [r.name for r in rules]
        chunks = [todo[i::jobs * 4] for i in range(min(len(todo), jobs * 4))]
        done: dict[str, FileFix] = {}
        for batch in pool_map(_fix_worker, [(c, names, settings, unsafe) for c in chunks], jobs):
            for d in batch:
                done[d.path] = d
        return [done[r.path] for r in todo]
    return [fix_file(r.path, rules, settings, unsafe, first=r) for r in todo]


def _fix_worker(args: tuple[list[FileResult], list[str], Settings, bool]) -> list[FileFix]:
    results, names, settings, unsafe = args
    table = static_rules()
    rules = [table[n] for n in names]
    return [fix_file(r.path, rules, settings, unsafe, first=r) for r in results]


def _unsafe_count(findings: list[Finding], unsafe: bool) -> int:
    if unsafe:
        return 0
    return sum(1 for f in findings if f.fix is not None and f.fix.applicability is Applicability.UNSAFE)


def fix_file(path: str, rules: list[type[Rule]], settings: Settings, unsafe: bool, *, first: Optional[FileResult] = None) -> FileFix:
    """Check-and-fix ``path`` in memory until no eligible fix is left. Never raises for bad input.

    ``first``: the result of checking this file just before; reused when the file still has those bytes.
    """
    try:
        with open(path, "rb") as fh:
            original = fh.read()
    except OSError as exc:
        return FileFix(path, b"", b"", messages=[f"{path}: not fixed: cannot read: {exc.strerror or exc}"])
    return fix_bytes(path, original, rules, settings, unsafe, first=first)


def fix_bytes(path: str, original: bytes, rules: list[type[Rule]], settings: Settings, unsafe: bool, *, first: Optional[FileResult] = None) -> FileFix:
    """Check-and-fix the bytes of ``path`` in memory until no eligible fix is left. Never raises."""
    done = FileFix(path, original, original)
    initial: Optional[FileResult] = None
    try:
        digest = hashlib.sha256(original).hexdigest()
        initial = first if first is not None and first.digest == digest else check_source(path, original, rules, settings)
        checked = initial
        data, applied = original, 0
        for round_no in range(MAX_ROUNDS + 1):
            if round_no:
                checked = check_source(path, data, rules, settings)
            done.remaining, done.result = checked.findings, checked
            if checked.error or checked.skipped:
                break
            todo = [f for f in sorted(checked.findings, key=lambda f: f.sort_key) if eligible(f.fix, unsafe)]
            if not todo:
                break
            new_data, count = _apply_round(path, data, todo)
            if count == 0 or new_data == data:
                break  # what is left cannot be placed (e.g. it would edit a notebook magic); it stays a finding
            if round_no == MAX_ROUNDS:
                names = ", ".join(sorted({f.rule for f in todo}))
                raise _Refused(f"the fixes of {names} did not settle after {MAX_ROUNDS} rounds (a doctor bug; please report it)")
            data, applied = new_data, applied + count
        if data != original:
            if checked.error:
                raise _Refused(f"checking the fixed code failed ({checked.error}); the file is left untouched")
            introduced = _introduced(initial.findings, checked.findings)
            if introduced:
                raise _Refused(
                    f"the fixes would bring new findings of {', '.join(introduced)}; the file is left untouched"
                )
    except _Refused as exc:
        done.messages.append(f"{path}: not fixed: {exc}")
        return _untouched(done, initial)
    except Exception as exc:  # noqa: BLE001 - a doctor bug on this file must not stop the others
        done.messages.append(f"{path}: not fixed: internal error: {type(exc).__name__}: {exc}")
        return _untouched(done, initial)
    done.fixed, done.applied = data, applied
    return done


def _untouched(done: FileFix, initial: Optional[FileResult]) -> FileFix:
    done.fixed, done.applied, done._diff = done.original, 0, None
    done.result = initial
    done.remaining = initial.findings if initial is not None else []
    return done


def _introduced(before: list[Finding], after: list[Finding]) -> list[str]:
    """Rules reporting more after the fixes than before: a fix must never create another finding."""
    old = Counter(f.rule for f in before)
    new = Counter(f.rule for f in after)
    return sorted(rule for rule, n in new.items() if n > old[rule])


# --- one round --------------------------------------------------------------------------------------


@dataclass
class _Span:
    """An edit resolved to character offsets in one piece of text (the file, or one notebook cell)."""

    piece: int  # -1 for a plain file, else the notebook cell index
    start: int
    end: int
    text: str


def _apply_round(path: str, data: bytes, findings: list[Finding]) -> tuple[bytes, int]:
    """Apply every non-overlapping fix of ``findings`` at once; raises _Refused when the result is invalid."""
    source = read_source(path, data)
    if not source.lossless:
        raise _Refused("its bytes do not decode losslessly, so it is never rewritten")
    if _ODD_LINE_BREAKS.search(source.text):
        raise _Refused("it contains form feeds or other unusual line breaks that make line numbers ambiguous")
    pieces = _pieces(source)
    starts: dict[int, list[int]] = {}  # line starts per piece, computed once per round (not per edit)
    joined_piece = {-1: source.text}
    joined_starts: dict[int, list[int]] = {}
    chosen: list[tuple[Finding, list[_Span], list[_Span]]] = []
    taken: list[_Span] = []
    seen_fixes: set = set()
    for f in findings:
        assert f.fix is not None
        key = (f.fix.applicability, f.fix.edits)
        if key in seen_fixes:
            continue  # two findings offering the same fix
        spans = _resolve(source, pieces, f.fix, starts=starts)
        joined = _resolve(source, joined_piece, f.fix, joined=True, starts=joined_starts)
        if spans is None or joined is None or _overlaps(spans, taken):
            continue  # cannot be placed, or waits for the next round
        seen_fixes.add(key)
        chosen.append((f, spans, joined))
        taken.extend(spans)
    if not chosen:
        return data, 0
    all_joined = [s for _, _, joined in chosen for s in joined]
    ranges = [(s.start, s.end) for s in all_joined]
    exprs = _expr_spans(source.text, _touched_statements(source.text, ranges), ranges)

    def problem_with(fixes: list) -> Optional[str]:
        new = _render(source, data, pieces, [s for _, spans, _ in fixes for s in spans])
        return _invalid(path, source, new, [s for _, _, joined in fixes for s in joined], exprs)

    problem = problem_with(chosen)
    if problem is not None:
        culprits = sorted({f.rule for f, spans, joined in chosen if problem_with([(f, spans, joined)]) is not None})
        who = f"the fix of {', '.join(culprits)}" if culprits else "the combined fixes of " + ", ".join(sorted({f.rule for f, _, _ in chosen}))
        raise _Refused(f"{who} would {problem}; the file is left untouched")
    return _render(source, data, pieces, taken), len(chosen)


def _pieces(source: Source) -> dict[int, str]:
    """The texts edits land in: the whole file, or each notebook code cell's own source."""
    if source.notebook is None:
        return {-1: source.text}
    return {index: cell_source(source.notebook["cells"][index], index + 1) for index, _, _ in source.cells}


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in _NEWLINE.finditer(text)]


def _offset(text: str, starts: list[int], line: int, column: int) -> Optional[tuple[int, bool]]:
    """Character offset of (1-based line, 0-based column); flag set when it is just past a final line with no newline."""
    if 1 <= line <= len(starts):
        base = starts[line - 1]
        nxt = starts[line] if line < len(starts) else len(text)
        body = text[base:nxt].rstrip("\r\n")
        if column > len(body):
            return None
        return base + column, False
    if line == len(starts) + 1 and column == 0 and text and not text.endswith(("\n", "\r")):
        return len(text), True
    return None


def _resolve(
    source: Source, pieces: dict[int, str], fix: Fix, joined: bool = False, starts: Optional[dict[int, list[int]]] = None
) -> Optional[list[_Span]]:
    """Each edit of ``fix`` as offsets in its piece, or None when one cannot be placed safely.

    ``joined``: resolve in the checked program text itself (for notebooks, the joined cells), to validate.
    ``starts``: a cache of each piece's line starts.
    """
    starts_of = starts if starts is not None else {}
    spans = []
    for edit in fix.edits:
        if source.notebook is None or joined:
            piece, line, end_line = -1, edit.line, edit.end_line
        else:
            where = _cell_lines(source, edit.line, edit.end_line)
            if where is None:
                return None
            piece, line, end_line = where
            if _cleaned_up(source, piece):
                return None  # IPython removed this cell's indentation: columns in it are not the cell's
        text = pieces[piece]
        if piece not in starts_of:
            starts_of[piece] = _line_starts(text)
        line_starts = starts_of[piece]
        a = _offset(text, line_starts, line, edit.column)
        b = _offset(text, line_starts, end_line, edit.end_column)
        if a is None or b is None or b[0] < a[0]:
            return None
        replacement = _NEWLINE.sub(lambda _: source.newline, edit.replacement)
        if a[1] and replacement:  # inserting after a last line that has no newline yet
            replacement = source.newline + replacement
        if source.notebook is not None and not joined and _touches_magic(source, piece, text, line_starts, a[0], b[0]):
            return None
        spans.append(_Span(piece, a[0], b[0], replacement))
    # The edits of one fix must not overlap each other either.
    if any(_overlaps([x], spans[:i]) for i, x in enumerate(spans)):
        return None
    return spans


def _cell_lines(source: Source, line: int, end_line: int) -> Optional[tuple[int, int, int]]:
    """Map a joined-program line range to (cell index, first line, last line) inside one cell.

    The separator line after a cell counts as that cell's end, so "insert after the cell's last
    statement" lands in the cell.
    """
    for index, first, count in source.cells:
        if first <= line <= first + count and first <= end_line <= first + count:
            return index, line - first + 1, end_line - first + 1
    return None


def _cleaned_up(source: Source, piece: int) -> bool:
    """Did IPython's cleanup change the cell (its indentation or a prompt removed)?"""
    for index, first, count in source.cells:
        if index == piece:
            return any(first + i in source.removed for i in range(max(count, 1)))
    return False


def _touches_magic(source: Source, piece: int, text: str, starts: list[int], start: int, end: int) -> bool:
    """An edit must not replace or split a line that stands for IPython syntax (``%magic``, ``!shell``...)."""
    first = next(f for index, f, _ in source.cells if index == piece)
    for i, base in enumerate(starts):
        if first + i not in source.ipython_lines:
            continue
        nxt = starts[i + 1] if i + 1 < len(starts) else len(text)
        line = text[base:nxt].rstrip("\r\n")
        if not line.strip():
            continue
        line_end = base + len(line)
        if (start < line_end and end > base) or base < start < line_end:
            return True
    return False


def _overlaps(new: list[_Span], taken: list[_Span]) -> bool:
    for a in new:
        for b in taken:
            if a.piece != b.piece:
                continue
            if a.start == b.start or (a.start < b.end and b.start < a.end):
                return True
    return False


def _render(source: Source, data: bytes, pieces: dict[int, str], spans: list[_Span]) -> bytes:
    texts = dict(pieces)
    for s in sorted(spans, key=lambda s: (s.piece, s.start, s.end), reverse=True):
        t = texts[s.piece]
        texts[s.piece] = t[: s.start] + s.text + t[s.end :]
    if source.notebook is None:
        try:
            return encode_python(source, texts[-1])
        except UnicodeEncodeError as exc:
            raise _Refused(f"the fixed text cannot be written in the file's encoding {source.encoding} ({exc.reason})") from None
    nb = copy.deepcopy(source.notebook)
    for index, text in texts.items():
        if text == pieces[index]:
            continue
        cell = nb["cells"][index]
        old = pieces[index]
        if old and not old.endswith("\n") and text.endswith("\n"):
            text = text[:-1]  # Jupyter keeps no newline after a cell's last line
        cell["source"] = text.splitlines(keepends=True) if isinstance(cell.get("source"), list) else text
    return encode_notebook(data, nb)


def _invalid(path: str, source: Source, new_data: bytes, joined: list[_Span], exprs: set[tuple[int, int]]) -> Optional[str]:
    """What is wrong with ``new_data`` (as a phrase after "would"), or None when it is a valid fix.

    The fixed program must be what the edits make of the checked program (for notebooks: the write-back
    into cells was faithful), the statements the edits touched must parse (with Python's own parser), and
    every expression a fix replaced must still be one expression (``loss`` -> ``loss / k`` inside
    ``loss.backward()`` would bind wrongly).
    """
    expected = source.text
    for s in sorted(joined, key=lambda s: s.start, reverse=True):
        expected = expected[: s.start] + s.text + expected[s.end :]
    try:
        actual = read_source(path, new_data).text
    except ValueError as exc:
        return f"not write a readable file ({exc})"
    if actual != expected:
        return "not map back into the file faithfully (a doctor bug; please report it)"
    # Where the edits landed in the fixed text (offsets shift by the edits before them).
    landed = []
    for s in joined:
        shift = sum(len(t.text) - (t.end - t.start) for t in joined if t.start < s.start)
        landed.append((s.start + shift, s.start + shift + len(s.text)))
    try:
        # The top-level statements the edits touched must parse (the whole fixed file is then parsed by the
        # re-check of the next round, where a new syntax error stops the fix like any new finding).
        tree = _touched_statements(expected, landed)
    except (SyntaxError, ValueError) as exc:
        return f"produce code that does not parse (line {getattr(exc, 'lineno', '?')}: {getattr(exc, 'msg', exc)})"
    new_exprs = _expr_spans(expected, tree, landed)
    for s in joined:
        if not s.text or (s.start, s.end) not in exprs:
            continue
        shift = sum(len(t.text) - (t.end - t.start) for t in joined if t.start < s.start)
        start, end = s.start + shift, s.start + shift + len(s.text)
        # ast spans exclude enclosing parentheses: `(loss / k)` is one expression spanning `loss / k`.
        inner = (start + 1, end - 1) if s.text.startswith("(") and s.text.endswith(")") else None
        if (start, end) not in new_exprs and inner not in new_exprs:
            return f"change how the surrounding code binds `{s.text}` (it needs parentheses)"
    return None


def _parse(text: str) -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(text)


def _touched_statements(text: str, ranges: list[tuple[int, int]]) -> ast.Module:
    """The top-level statements of ``text`` that overlap the character ``ranges``, parsed one by one at their
    own lines (a module holding just them). Parsing the whole file again per fix round cost as much as checking
    it. Raises SyntaxError when one of them does not parse."""
    from doctor.core.segments import layout

    found = layout(text)
    lines = _Lines(found.line_starts, ranges)
    body: list[ast.stmt] = []
    for st in found.statements:
        if not lines.overlaps(ast.Pass(lineno=st.first, end_lineno=st.last)):
            continue
        piece = _parse(text[st.start : st.end])
        ast.increment_lineno(piece, st.first - 1)
        body.extend(piece.body)
    return ast.Module(body=body, type_ignores=[])


class _Lines:
    """The lines some character ranges of a text cover, merged, for quick overlap tests."""

    def __init__(self, starts: list[int], ranges: list[tuple[int, int]]) -> None:
        spans = sorted((bisect.bisect_right(starts, a), bisect.bisect_right(starts, max(b - 1, a))) for a, b in ranges)
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.firsts = [a for a, _ in merged]
        self.lasts = [b for _, b in merged]

    def overlaps(self, node: ast.AST) -> bool:
        first, last = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        if first is None or last is None:
            return True
        i = bisect.bisect_right(self.firsts, last) - 1  # the last merged range starting at or before `last`
        return i >= 0 and self.lasts[i] >= first


def _expr_spans(text: str, tree: ast.Module, ranges: Optional[list[tuple[int, int]]] = None) -> set[tuple[int, int]]:
    """(start, end) character offsets of the expressions in ``text`` (only those on the lines of ``ranges``,
    character ranges, when given: a walk of the whole tree per fix round is linear in the file, per round)."""
    starts = _line_starts(text)
    lines = _Lines(starts, ranges) if ranges is not None else None

    def offset(line: int, byte_col: int) -> int:
        base = starts[line - 1]
        nxt = starts[line] if line < len(starts) else len(text)
        body = text[base:nxt]
        col = byte_col if body.isascii() else len(body.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))
        return base + col

    out = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if lines is not None and node is not tree and not lines.overlaps(node):
            continue
        if isinstance(node, ast.expr) and getattr(node, "end_lineno", None) is not None:
            out.add((offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)))  # type: ignore[arg-type]
        todo.extend(ast.iter_child_nodes(node))
    return out


# --- writing and showing ----------------------------------------------------------------------------


def _write_back(done: FileFix, messages: list[str]) -> bool:
    """Write atomically, only if the file is still what we fixed and we may write it."""
    from doctor.core.fsutil import replace_contents

    target = os.path.realpath(done.path)  # write through a symlink, do not replace the link
    try:
        with open(target, "rb") as fh:
            now = fh.read()
    except OSError as exc:
        messages.append(f"{done.path}: not fixed: cannot read it again: {exc.strerror or exc}")
        return False
    if now != done.original:
        messages.append(f"{done.path}: not fixed: the file changed on disk while doctor was fixing it; run again")
        return False
    if not os.access(target, os.W_OK) or not os.stat(target).st_mode & 0o222:
        # os.replace would happily rename over a read-only file (and root may write anything):
        # no write bit at all means the owner asked for the file to stay as it is.
        messages.append(f"{done.path}: not fixed: the file is read-only")
        return False
    try:
        # Atomic (a new file renamed over it) unless the file has other hard links or an owner we cannot
        # give a new file: then rewritten in place, so that the links, the owner and the group stay.
        replace_contents(target, done.fixed)
    except OSError as exc:
        messages.append(f"{done.path}: not fixed: cannot write: {exc.strerror or exc}")
        return False
    return True


def _diff(path: str, before: bytes, after: bytes) -> str:
    if path.endswith(".ipynb"):
        return _notebook_diff(path, before, after)
    old = read_source(path, before).text
    new = read_source(path, after).text
    return _unified(old, new, path, path)


def _unified(old: str, new: str, name_a: str, name_b: str) -> str:
    a = [line.rstrip("\r\n") + "\n" for line in old.splitlines(keepends=True)]
    b = [line.rstrip("\r\n") + "\n" for line in new.splitlines(keepends=True)]
    return "".join(difflib.unified_diff(a, b, f"a/{name_a}", f"b/{name_b}"))


def _notebook_diff(path: str, before: bytes, after: bytes) -> str:
    old, new = decode_notebook(before).notebook, decode_notebook(after).notebook
    assert old is not None and new is not None
    out = []
    for index, (ca, cb) in enumerate(zip(old["cells"], new["cells"])):
        if not isinstance(ca, dict) or not isinstance(cb, dict):
            continue
        ta, tb = cell_source(ca, index + 1), cell_source(cb, index + 1)
        if ta != tb:
            out.append(_unified(ta, tb, f"{path}:cell {index + 1}", f"{path}:cell {index + 1}"))
    return "".join(out)


__all__ = ["FixOutcome", "FileFix", "apply_fixes", "fix_file", "eligible", "MAX_ROUNDS"]
