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

    def segment(self, node: ast.AST) -> str:
        """The source text of ``node``; for a node of another file (inlined from a local module) its code."""
        if not self._local(node):
            try:
                return ast.unparse(node)
            except Exception:  # noqa: BLE001 - a message must never fail on odd syntax
                return ""
        return ast.get_source_segment(self.source.text, node) or ""

    def _local(self, node: ast.AST) -> bool:
        model = self.__dict__.get("model")
        return model is None or model.owns(node) or not hasattr(node, "lineno") or isinstance(node, ast.Pass)

    def fingerprint(self, rule: str, line: int) -> str:
        """Keyed by rule and the code on the line, not the line number, so baselines survive edits."""
        text = self.lines[line - 1].strip() if 1 <= line <= len(self.lines) else ""
        return hashlib.sha1(f"{rule}\0{text}".encode("utf-8", "replace")).hexdigest()[:16]

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
        cell = None
        if self.source.cells:
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
