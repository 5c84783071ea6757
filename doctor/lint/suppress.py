"""Inline suppressions: ``# noqa``, ``# noqa: DR101,missing-zero-grad`` and ``# doctor: ignore[...]``."""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass, field
from typing import Optional

_NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Za-z0-9_\-]+(?:[\s,]+[A-Za-z0-9_\-]+)*))?", re.IGNORECASE)
_DOCTOR = re.compile(r"#\s*doctor:\s*ignore(?:\[(?P<codes>[^\]]*)\])?", re.IGNORECASE)


@dataclass
class Suppression:
    line: int
    column: int
    #: Empty means "everything on this line".
    codes: tuple[str, ...]
    form: str  # "noqa" or "doctor"
    used: set[str] = field(default_factory=set)

    def covers(self, rule: str, code: str) -> bool:
        if not self.codes:
            return True
        return any(c.lower() in (rule.lower(), code.lower()) for c in self.codes)


def _comments(text: str) -> list[tuple[int, int, str]]:
    """(line, column, comment) for each real comment token; falls back to a regex scan if tokenizing fails."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out.append((tok.start[0], tok.start[1], tok.string))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        for i, line in enumerate(text.splitlines(), 1):
            idx = line.find("#")
            if idx >= 0:
                out.append((i, idx, line[idx:]))
    return out


def parse_suppressions(text: str, comments: Optional[list[tuple[int, int, str]]] = None) -> dict[int, list[Suppression]]:
    """Suppressions by line. Only comments are read (a ``# noqa`` inside a string does not count).

    ``comments``: the file's comments as (line, column, text) when already known (big files: tokenizing
    megabytes in Python takes seconds).
    """
    lowered = text.lower()
    if "noqa" not in lowered and "doctor:" not in lowered:
        return {}
    result: dict[int, list[Suppression]] = {}
    for line, col, comment in (comments if comments is not None else _comments(text)):
        for m in _NOQA.finditer(comment):
            codes = tuple(c for c in re.split(r"[\s,]+", m.group("codes") or "") if c)
            result.setdefault(line, []).append(Suppression(line, col + m.start() + 1, codes, "noqa"))
        for m in _DOCTOR.finditer(comment):
            codes = tuple(c.strip() for c in (m.group("codes") or "").split(",") if c.strip())
            result.setdefault(line, []).append(Suppression(line, col + m.start() + 1, codes, "doctor"))
    return result


def is_ours(code: str, known: set[str]) -> bool:
    """A ``# noqa: E501`` belongs to another linter; only our codes and names can be 'unused'."""
    return code.lower() in known or code.upper().startswith("DR")
