"""Big files are checked one part at a time, so that time and memory stay linear in the file's size.

A syntax tree costs CPython about 150 times the source it comes from: a 5 MB module would need 700 MB and
more before a single rule runs. A file over ``PARTS_FROM_BYTES`` is therefore cut, between top-level
statements (``doctor.core.segments``), into parts of about ``PART_BYTES``; each part is parsed and checked on
its own and thrown away. Every part keeps its lines where they are (the rest of the file is blank lines), so
findings need no mapping. What a part's code uses from elsewhere in the file comes along: the module's
imports, and the top-level definitions and assignments whose names it mentions (two levels deep, up to
``CONTEXT_BYTES``). A statement larger than ``DATA_BYTES`` that mentions nothing of PyTorch (a table, a data
dump) is never parsed.

What a part cannot see is left unsaid: rules that judge the file as a whole (``Rule.whole_file``: a seed
anywhere, a scheduler state saved anywhere) do not run on parts, and findings in parts carry no fix (a fix is
validated against the whole file).
"""

from __future__ import annotations

import re
from typing import Iterator

from doctor.core.segments import Statement, layout
from doctor.core.source import worth_parsing_text

#: Files larger than this are checked in parts (hand-written training code stays far below it).
PARTS_FROM_BYTES = 1024 * 1024
#: About how much source one part holds.
PART_BYTES = 192 * 1024
#: At most this much code is copied into one part for the definitions its code uses.
CONTEXT_BYTES = 192 * 1024
#: Definitions larger than this are not copied into other parts.
CONTEXT_ITEM_BYTES = 32 * 1024
#: A top-level statement this large without a word of PyTorch is data, not code to check.
DATA_BYTES = 64 * 1024

_IDENT = re.compile(r"[A-Za-z_]\w*")


class Plan:
    """The parts of one file, and its comments (read once, for the suppressions)."""

    def __init__(self, text: str) -> None:
        self.text = text
        found = layout(text)
        self.comments = found.comments
        self.statements = found.statements
        self._names: dict[int, set[str]] = {}

    def _size(self, s: Statement) -> int:
        return s.end - s.start

    def _names_of(self, s: Statement) -> set[str]:
        key = id(s)
        if key not in self._names:
            self._names[key] = set(_IDENT.findall(self.text, s.start, s.end))
        return self._names[key]

    def _is_data(self, s: Statement) -> bool:
        return self._size(s) > DATA_BYTES and not worth_parsing_text(self.text[s.start : s.end])

    def parts(self) -> Iterator[str]:
        """Each part's text: the file's lines, with the lines of other parts left empty."""
        imports = [s for s in self.statements if s.is_import]
        body = [s for s in self.statements if not s.is_import and not self._is_data(s)]
        defined: dict[str, list[Statement]] = {}
        for s in body:
            if self._size(s) <= CONTEXT_ITEM_BYTES:
                for name in s.binds:
                    defined.setdefault(name, []).append(s)
        group: list[Statement] = []
        size = 0
        for s in body:
            group.append(s)
            size += self._size(s)
            if size >= PART_BYTES:
                yield self._assemble(group, imports, defined)
                group, size = [], 0
        if group or not body:
            yield self._assemble(group, imports, defined)

    def _assemble(self, group: list[Statement], imports: list[Statement], defined: dict[str, list[Statement]]) -> str:
        included = {id(s): s for s in (*imports, *group)}
        budget = CONTEXT_BYTES
        frontier = list(group)
        for _ in range(2):  # what the part uses, and what that uses
            nxt = []
            for s in frontier:
                for name in self._names_of(s):
                    for d in defined.get(name, ()):
                        if id(d) not in included and self._size(d) <= budget:
                            included[id(d)] = d
                            budget -= self._size(d)
                            nxt.append(d)
            frontier = nxt
        pieces: list[str] = []
        line = 1
        for s in sorted(included.values(), key=lambda s: s.first):
            pieces.append("\n" * (s.first - line))
            pieces.append(self.text[s.start : s.end])
            line = s.last + 1
        return "".join(pieces)
