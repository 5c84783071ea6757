"""Baselines: adopt doctor on an existing codebase by recording today's findings and reporting only new ones.

A baseline entry is keyed by rule, file and the finding's fingerprint (a hash of the rule and the code on
the line, see ``FileContext.fingerprint``), never by line number, so inserting or removing lines above a
finding keeps it baselined while changing the offending line reports it again. Each key has a count: two
identical offending lines in one file are two findings, and a third copy added later is new.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from doctor.core.findings import Finding
from doctor.core.fsutil import atomic_write_text

#: Bumped when the file layout or the fingerprint recipe changes; older files are rejected with a message.
BASELINE_VERSION = 1

Key = tuple[str, str, str]


class BaselineError(Exception):
    """A baseline file that cannot be used (missing, unreadable, corrupt); the CLI exits 2 and writes nothing."""


def _relative_path(path: str, folder: str) -> str:
    """Paths in a baseline are relative to the baseline's folder, with '/', so the file can be committed."""
    try:
        rel = os.path.relpath(os.path.abspath(path), folder)
    except ValueError:  # another drive on Windows
        rel = os.path.abspath(path)
    return rel.replace(os.sep, "/")


def _key(finding: Finding, folder: str) -> Key:
    # Runtime findings may carry no fingerprint; the message is then the most stable thing we have.
    return (finding.rule, _relative_path(finding.path, folder), finding.fingerprint or f"message:{finding.message}")


def _folder_of(baseline_path: str) -> str:
    return os.path.dirname(os.path.abspath(baseline_path))


@dataclass
class Baseline:
    """Recorded findings: how many times each (rule, path, fingerprint) key was seen."""

    folder: str
    counts: Counter

    def new_findings(self, findings: Iterable[Finding]) -> list[Finding]:
        """The findings beyond the recorded count for their key, in their given order."""
        remaining = Counter(self.counts)
        out = []
        for f in findings:
            key = _key(f, self.folder)
            if remaining[key] > 0:
                remaining[key] -= 1
            else:
                out.append(f)
        return out

    def __len__(self) -> int:
        return sum(self.counts.values())


def write_baseline(path: str, findings: Iterable[Finding]) -> None:
    """Record the findings in ``path`` (atomically: an interrupted write leaves the old file intact)."""
    folder = _folder_of(path)
    counts: Counter = Counter()
    examples: dict[Key, Finding] = {}
    for f in findings:
        key = _key(f, folder)
        counts[key] += 1
        examples.setdefault(key, f)
    entries = []
    for key in sorted(counts):
        rule, rel, fingerprint = key
        example = examples[key]
        # line and message are for the humans reviewing the baseline; matching ignores them.
        entries.append(
            {
                "rule": rule,
                "code": example.code,
                "path": rel,
                "fingerprint": fingerprint,
                "count": counts[key],
                "line": example.line,
                "message": example.message,
            }
        )
    payload = {"tool": "doctor", "version": BASELINE_VERSION, "findings": entries}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def load_baseline(path: str) -> Baseline:
    """Read a baseline file; raise ``BaselineError`` with a message the user can act on."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise BaselineError(f"baseline file not found: {path} (create it with `doctor check --write-baseline {path}`)") from None
    except IsADirectoryError:
        raise BaselineError(f"baseline path is a folder, not a file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"cannot read baseline file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline file {path} is not valid JSON ({exc}); regenerate it with --write-baseline") from None
    if not isinstance(data, dict) or data.get("tool") != "doctor" or not isinstance(data.get("findings"), list):
        raise BaselineError(f"{path} is not a doctor baseline file; regenerate it with --write-baseline")
    if data.get("version") != BASELINE_VERSION:
        raise BaselineError(
            f"baseline file {path} has version {data.get('version')!r}, this doctor reads version {BASELINE_VERSION}; "
            "regenerate it with --write-baseline"
        )
    counts: Counter = Counter()
    for i, entry in enumerate(data["findings"]):
        try:
            key = (str(entry["rule"]), str(entry["path"]), str(entry["fingerprint"]))
            count = int(entry.get("count", 1))
        except (TypeError, KeyError, ValueError, AttributeError):
            raise BaselineError(f"baseline file {path}: entry {i} is malformed (needs rule, path, fingerprint, count)") from None
        if count < 1:
            raise BaselineError(f"baseline file {path}: entry {i} has count {count}, expected at least 1")
        counts[key] += count
    return Baseline(folder=_folder_of(path), counts=counts)
