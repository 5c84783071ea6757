"""What a rule sees of one file: source, syntax tree, the training-loop model, and a finding factory."""

from __future__ import annotations

import ast
import hashlib
import re
from functools import cached_property
from typing import TYPE_CHECKING, Optional

from doctor.core.findings import Finding, Fix, Reporter, Severity
from doctor.core.source import Source, cell_position

if TYPE_CHECKING:
    from doctor.analysis.model import TrainingModel


#: Line references inside rule messages ("(line 17)"); in notebooks they are rewritten to cell lines.
_LINE_REF = re.compile(r"\bline (\d+)")
#: One physical line as Python's parser counts them (``\r\n``, ``\r`` or ``\n`` end a line), with its end.
_AST_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


class FileContext:
    def __init__(self, path: str, source: Source, tree: ast.Module) -> None:
        self.path = path
        self.source = source
        self.tree = tree
        self.lines = source.text.splitlines()

    @cached_property
    def model(self) -> "TrainingModel":
        from doctor.analysis.model import TrainingModel

        return TrainingModel(self.tree, path=self.path)

    def char_column(self, line: int, byte_col: int) -> int:
        """ast columns count UTF-8 bytes; editors and SARIF count characters."""
        if 1 <= line <= len(self.lines):
            text = self.lines[line - 1]
            if text.isascii():
                return byte_col
            return len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))
        return byte_col

    @cached_property
    def _ast_lines(self) -> list[str]:
        """The text split where the parser splits it (not at form feeds, unlike ``str.splitlines``), ends kept."""
        return _AST_LINE.findall(self.source.text)

    def segment(self, node: ast.AST) -> str:
        """The source text of ``node`` (what ``ast.get_source_segment`` gives, without re-splitting the file
        on every call: that made files with many findings quadratic); for a node of another file (inlined
        from a local module) its code."""
        if not self._local(node):
            try:
                return ast.unparse(node)
            except Exception:  # noqa: BLE001 - a message must never fail on odd syntax
                return ""
        try:
            first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]
            col, end_col = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
        except AttributeError:
            return ""
        lines = self._ast_lines
        if None in (last, end_col) or not 0 <= first <= last < len(lines):
            return ""
        if first == last:
            return lines[first].encode("utf-8")[col:end_col].decode("utf-8", "replace")
        head = lines[first].encode("utf-8")[col:].decode("utf-8", "replace")
        tail = lines[last].encode("utf-8")[:end_col].decode("utf-8", "replace")
        return "".join([head, *lines[first + 1 : last], tail])

    def code_for(self, key: Optional[str], node: Optional[ast.AST]) -> Optional[str]:
        """The code, on one line, of the expression under ``node`` that is the object ``key`` (``optims[0]`` for
        the key ``optims[]``, whose subscripts are collapsed); None when ``node`` holds no such expression."""
        if not key or node is None:
            return None
        from doctor.analysis.names import receiver_key

        for n in ast.walk(node):
            if isinstance(n, (ast.Name, ast.Attribute, ast.Subscript)) and receiver_key(n) == key:
                return one_line(self.segment(n)) or None
        return None

    def shown(self, key: Optional[str], node: Optional[ast.AST] = None, default: str = "the optimizer") -> str:
        """How a message names the object ``key``: its code at ``node`` (``optims[0]``), else the key with any
        collapsed subscript shown as such (``optims[…]``), never the internal ``optims[]``."""
        if not key:
            return default
        return self.code_for(key, node) or key.replace("[]", "[…]")

    def fix_code_for(self, key: Optional[str], node: Optional[ast.AST]) -> Optional[str]:
        """Like ``code_for``, but only code a fix may repeat elsewhere in the same scope: names, attributes and
        subscripts by constants (``optims[0]``, ``self.opt``), never ``optims[i]`` or a call."""
        code = self.code_for(key, node)
        if code is None:
            return None
        try:
            expr = ast.parse(code, mode="eval").body
        except SyntaxError:
            return None
        for n in ast.walk(expr):
            if not isinstance(n, (ast.Name, ast.Attribute, ast.Subscript, ast.Constant, ast.Load)):
                return None
            if isinstance(n, ast.Subscript) and not isinstance(n.slice, ast.Constant):
                return None
        return code

    def _local(self, node: ast.AST) -> bool:
        model = self.__dict__.get("model")
        return model is None or model.owns(node) or not hasattr(node, "lineno") or isinstance(node, ast.Pass)

    def fingerprint(self, rule: str, line: int) -> str:
        """Keyed by rule and the code on the line, not the line number, so baselines survive edits."""
        text = self.lines[line - 1].strip() if 1 <= line <= len(self.lines) else ""
        return hashlib.sha1(f"{rule}\0{text}".encode("utf-8", "replace")).hexdigest()[:16]

    def _fix_placeable(self, fix: Fix) -> bool:
        """The fixer writes no edit into a notebook cell whose indentation IPython's cleanup removed (its
        columns are not the cell's): such a cell's findings carry no fix."""
        for edit in fix.edits:
            for index, first, count in self.source.cells:
                if first <= edit.line <= first + count and any(first + i in self.source.removed for i in range(max(count, 1))):
                    return False
        return True

    def _cell_ref(self, line: int) -> str:
        """`line 17` of the joined notebook program as the user sees it: `cell 3, line 2`."""
        cell, cell_line = cell_position(self.source, line)
        return f"line {line}" if cell is None else f"cell {cell + 1}, line {cell_line}"

    def make_finding(
        self,
        rule: Reporter,
        node: ast.AST,
        message: str,
        *,
        fix: Optional[Fix] = None,
        severity: Optional[Severity] = None,
        evidence: Optional[dict] = None,
    ) -> Finding:
        if not self._local(node):
            node = self.model.anchor_of(node)  # a node of another file: report the call here that led there
        line = getattr(node, "lineno", 1)
        end_line = getattr(node, "end_lineno", None) or line
        col = self.char_column(line, getattr(node, "col_offset", 0))
        end_col = self.char_column(end_line, getattr(node, "end_col_offset", None) or 0)
        message = one_line(message)
        cell = None
        if fix is not None and self.source.removed and not self._fix_placeable(fix):
            fix = None  # never advertise a fix the fixer will not write
        if self.source.cells:
            # Columns in the cell as the user wrote it (IPython's cleanup may have removed an indentation).
            col += self.source.removed.get(line, 0)
            end_col += self.source.removed.get(end_line, 0)
            cell, cell_line = cell_position(self.source, line)
            _, cell_end = cell_position(self.source, end_line)
            end_line = cell_end
            line = cell_line
            message = _LINE_REF.sub(lambda m: self._cell_ref(int(m.group(1))), message)
        return Finding(
            path=self.path,
            line=line,
            column=col + 1,
            end_line=end_line,
            end_column=end_col + 1,
            rule=rule.name,
            code=rule.code,
            severity=severity or rule.severity,
            message=message,
            fix=fix if self.source.lossless else None,
            cell=cell,
            evidence=evidence or {},
            fingerprint=self.fingerprint(rule.name, getattr(node, "lineno", 1)),
        )


_BREAK_AFTER_OPEN = re.compile(r"([(\[{])[ \t]*(?:\\)?\r?\n\s*")
_BREAK_BEFORE_CLOSE = re.compile(r",?[ \t]*(?:\\)?\r?\n\s*([)\]}])")
_BREAK = re.compile(r"[ \t]*(?:\\)?\r?\n\s*")


def one_line(message: str) -> str:
    """A message on one line: code quoted from a call written over several lines is joined the way one would
    write it on one (``f(\n    a,\n    b,\n)`` -> ``f(a, b)``); text output is one finding per line."""
    if "\n" not in message:
        return message
    message = _BREAK_AFTER_OPEN.sub(r"\1", message)
    message = _BREAK_BEFORE_CLOSE.sub(r"\1", message)
    return _BREAK.sub(" ", message)
