"""The one finding type shared by the static checker and the runtime probe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Optional, Protocol


class Severity(str, Enum):
    """How bad a finding is. Ordered: info < warning < error."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]

    @classmethod
    def parse(cls, value: str) -> "Severity":
        try:
            return cls(value.lower())
        except ValueError:
            raise ValueError(f"unknown severity {value!r} (expected error, warning or info)") from None


class Applicability(str, Enum):
    """Whether a fix may be applied without asking: unsafe fixes change training numerics."""

    SAFE = "safe"
    UNSAFE = "unsafe"


class Reporter(Protocol):
    """What a finding needs to know of the rule or check that reports it."""

    name: str
    code: str
    severity: Severity


@dataclass(frozen=True)
class Edit:
    """Replace the text between two (1-based line, 0-based character column) positions."""

    line: int
    column: int
    end_line: int
    end_column: int
    replacement: str


@dataclass(frozen=True)
class Fix:
    description: str
    applicability: Applicability
    edits: tuple[Edit, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "applicability": self.applicability.value,
            "edits": [asdict(e) for e in self.edits],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Fix":
        return cls(
            description=data["description"],
            applicability=Applicability(data["applicability"]),
            edits=tuple(Edit(**e) for e in data["edits"]),
        )


@dataclass(frozen=True)
class Finding:
    """One problem at one place: a static rule violation, or a runtime check that points at source.

    ``line``/``column`` are 1-based, as editors and SARIF show them. ``origin`` is ``static`` or
    ``runtime``; ``evidence`` carries numbers (runtime measurements, or what confirmed a static finding).
    """

    path: str
    line: int
    column: int
    end_line: int
    end_column: int
    rule: str
    code: str
    severity: Severity
    message: str
    fix: Optional[Fix] = None
    origin: str = "static"
    cell: Optional[int] = None
    evidence: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    fingerprint: str = field(default="", compare=False, hash=False)

    @property
    def sort_key(self) -> tuple:
        return (self.path, self.cell or 0, self.line, self.column, self.code, self.message)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
            "rule": self.rule,
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "origin": self.origin,
            "fix": self.fix.to_dict() if self.fix else None,
        }
        if self.cell is not None:
            data["cell"] = self.cell
        if self.evidence:
            data["evidence"] = self.evidence
        if self.fingerprint:
            data["fingerprint"] = self.fingerprint
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(
            path=data["path"],
            line=data["line"],
            column=data["column"],
            end_line=data["end_line"],
            end_column=data["end_column"],
            rule=data["rule"],
            code=data["code"],
            severity=Severity(data["severity"]),
            message=data["message"],
            fix=Fix.from_dict(data["fix"]) if data.get("fix") else None,
            origin=data.get("origin", "static"),
            cell=data.get("cell"),
            evidence=data.get("evidence") or {},
            fingerprint=data.get("fingerprint", ""),
        )
