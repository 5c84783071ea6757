"""Top-level statements of a big Python file, found without parsing it.

Parsing a 5 MB module builds about a million syntax-tree nodes (700 MB and more in CPython); the checker
therefore reads big files one part at a time (``doctor.lint.parts``). Where one top-level statement ends
and the next begins is found here with one regular-expression scan that knows strings, comments, brackets
and backslash continuations: a statement starts on a line that begins a logical line at column 0 (not
``else:``/``elif``/``except``/``finally:``, which continue the statement above, and not right after a
decorator). Comments are reported too, so that suppressions can be read without tokenizing the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
      (?P<str>[rRbBuUfF]{0,3}(?:
          \"\"\"(?:[^"\\]|\\[\s\S]|"(?!""))*(?:\"\"\"|\Z)
        | '''(?:[^'\\]|\\[\s\S]|'(?!''))*(?:'''|\Z)
        | "(?:[^"\\\n]|\\[\s\S])*(?:"|$)
        | '(?:[^'\\\n]|\\[\s\S])*(?:'|$)
      ))
    | (?P<com>\#[^\n]*)
    | (?P<open>[(\[{])
    | (?P<close>[)\]}])
    | (?P<cont>\\\r?\n)
    | (?P<nl>\n)
    """,
    re.VERBOSE | re.MULTILINE,
)
_CONTINUES = re.compile(r"(?:else|elif|except|finally)\b")
_DEF = re.compile(r"(?:async\s+def|def|class)\s+([A-Za-z_]\w*)")
_DEF_LINE = re.compile(r"^(?:async\s+def|def|class)\s+([A-Za-z_]\w*)", re.MULTILINE)
_ASSIGN = re.compile(r"([A-Za-z_]\w*)\s*(?::[^=\n]*)?=(?!=)")


@dataclass
class Statement:
    """One top-level statement: lines ``first`` to ``last`` (1-based, inclusive) and characters ``start:end``."""

    first: int
    last: int
    start: int
    end: int
    #: Names the statement binds at module level (a def or class name, a simple assignment's target).
    binds: set[str] = field(default_factory=set)
    is_import: bool = False


@dataclass
class Layout:
    statements: list[Statement]
    #: (line, column, text) of every comment.
    comments: list[tuple[int, int, str]]
    #: Character offset of each line's start.
    line_starts: list[int]


def layout(text: str) -> Layout:
    """The top-level statements and the comments of ``text`` (which need not parse)."""
    line_starts = [0]
    line_starts.extend(m.end() for m in re.finditer("\n", text))
    candidates: list[int] = [0]  # lines (0-based) that begin a logical line at column 0
    comments: list[tuple[int, int, str]] = []
    depth = 0
    line = 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "str":
            line += text.count("\n", m.start(), m.end())
        elif kind == "com":
            comments.append((line + 1, m.start() - line_starts[line], m.group()))
        elif kind == "open":
            depth += 1
        elif kind == "close":
            depth = max(depth - 1, 0)
        elif kind == "cont":
            line += 1  # the next line continues this one: it starts nothing
        else:  # a newline
            line += 1
            if depth == 0 and line < len(line_starts):
                pos = line_starts[line]
                c = text[pos : pos + 1]
                if c and not c.isspace() and c != "#" and not _CONTINUES.match(text, pos):
                    candidates.append(line)
    # A decorator and the def or class under it are one statement.
    starts: list[int] = []
    after_decorator = False
    for c in candidates:
        if not after_decorator:
            starts.append(c)
        after_decorator = text.startswith("@", line_starts[c])
    statements = []
    for i, first in enumerate(starts):
        last = (starts[i + 1] - 1) if i + 1 < len(starts) else len(line_starts) - 1
        start = line_starts[first]
        end = line_starts[last + 1] if last + 1 < len(line_starts) else len(text)
        statements.append(_describe(text, Statement(first + 1, last + 1, start, end)))
    return Layout(statements, comments, line_starts)


def _describe(text: str, st: Statement) -> Statement:
    head = text[st.start : min(st.end, st.start + 2000)]
    if head.startswith(("import ", "from ")):
        st.is_import = True
        return st
    m = _DEF_LINE.search(head) if head.startswith("@") else _DEF.match(head)
    if m:
        st.binds.add(m.group(1))
        return st
    m = _ASSIGN.match(head)
    if m:
        st.binds.add(m.group(1))
    return st
