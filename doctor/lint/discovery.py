"""Finding the files to check: folders walked with default excludes and .gitignore, explicit files always kept."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional

from doctor.lint.config import Settings, glob_match, relative_path

SUFFIXES = (".py", ".ipynb")


@dataclass
class _IgnoreRule:
    regex: re.Pattern
    negated: bool
    dir_only: bool


def _gitignore_regex(pattern: str) -> str:
    """Translate one gitignore pattern (already stripped of '!' and trailing '/') to a regex on rel paths."""
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            c = pattern[i]
            out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
            i += 1
    body = "".join(out)
    return ("^" if anchored else "^(?:.*/)?") + body + "$"


def _read_gitignore(folder: str) -> list[_IgnoreRule]:
    path = os.path.join(folder, ".gitignore")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    rules = []
    for raw in lines:
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        try:
            rules.append(_IgnoreRule(re.compile(_gitignore_regex(line)), negated, dir_only))
        except re.error:
            continue
    return rules


def _git_root(start: str) -> Optional[str]:
    here = os.path.abspath(start)
    while True:
        if os.path.exists(os.path.join(here, ".git")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


class _GitIgnore:
    """The .gitignore files from the repository root down to each folder, applied in order (last match wins)."""

    def __init__(self) -> None:
        self._cache: dict[str, list[_IgnoreRule]] = {}
        self._chains: dict[tuple[str, str], list[tuple[str, list[_IgnoreRule]]]] = {}

    def _rules(self, folder: str) -> list[_IgnoreRule]:
        if folder not in self._cache:
            self._cache[folder] = _read_gitignore(folder)
        return self._cache[folder]

    def _chain(self, folder: str, root: str) -> list[tuple[str, list[_IgnoreRule]]]:
        """The folders from ``root`` down to ``folder`` that have .gitignore rules (memoised per folder)."""
        key = (folder, root)
        if key not in self._chains:
            parent = os.path.dirname(folder)
            above = [] if folder == root or parent == folder else self._chain(parent, root)
            rules = self._rules(folder)
            self._chains[key] = above + [(folder, rules)] if rules else above
        return self._chains[key]

    def ignored(self, path: str, is_dir: bool, root: Optional[str]) -> bool:
        if root is None:
            return False
        path = os.path.abspath(path)
        result = False
        for folder, rules in self._chain(os.path.dirname(path), root):
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            for rule in rules:
                if rule.dir_only and not is_dir:
                    continue
                if rule.regex.match(rel):
                    result = not rule.negated
        return result


_NAME_PATTERNS: dict[tuple[str, ...], re.Pattern] = {}


def _excluded(name: str, path: str, root: str, patterns: tuple[str, ...]) -> bool:
    regex = _NAME_PATTERNS.get(patterns)
    if regex is None:  # one regex for all name patterns instead of one fnmatch per pattern per entry
        regex = _NAME_PATTERNS[patterns] = re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)")
    if regex.match(name):
        return True
    # Only patterns with a folder part need the path relative to the config root.
    with_folder = [p for p in patterns if "/" in p]
    return bool(with_folder) and any(glob_match(relative_path(path, root), p) for p in with_folder)


def discover(
    paths: list[str],
    settings: Settings,
    *,
    force_exclude: tuple[str, ...] = (),
    problems: Optional[list[tuple[str, str]]] = None,
) -> Iterator[str]:
    """Yield the files to check, each once, in a stable order. Missing paths must be checked by the caller.

    ``force_exclude``: patterns (``--exclude``) that also drop files named explicitly. ``problems``: where a
    folder that cannot be listed is recorded as (path, message) instead of being passed over in silence.
    """
    excludes = tuple(settings.exclude) + tuple(settings.extend_exclude) + tuple(force_exclude)
    gitignore = _GitIgnore()
    seen: set[str] = set()
    for given in paths:
        if force_exclude and _excluded(os.path.basename(os.path.normpath(given)), given, settings.root, force_exclude):
            continue
        if os.path.isfile(given):
            key = os.path.realpath(given)
            if key not in seen:
                seen.add(key)
                yield given
            continue
        root = _git_root(given) if settings.respect_gitignore else None
        visited_dirs: set[str] = set()
        stack = [given]
        found: list[str] = []
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            if real in visited_dirs:  # symlink loops, or two links to one folder
                continue
            visited_dirs.add(real)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                if problems is not None:
                    problems.append((folder, f"cannot read folder: {exc.strerror or exc}"))
                continue
            for entry in entries:
                if _excluded(entry.name, entry.path, settings.root, excludes):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if gitignore.ignored(entry.path, is_dir, root):
                    continue
                if is_dir:
                    stack.append(entry.path)
                elif entry.name.endswith(SUFFIXES):
                    try:
                        if not entry.is_file():
                            continue
                    except OSError:
                        continue
                    key = os.path.realpath(entry.path)
                    if key not in seen:
                        seen.add(key)
                        found.append(entry.path)
        yield from sorted(found)


def display_path(path: str) -> str:
    """Paths as given, or relative to the current folder when that is shorter."""
    if os.path.isabs(path):
        try:
            rel = os.path.relpath(path)
            if not rel.startswith(".."):
                return rel
        except ValueError:
            pass
        return path
    return os.path.normpath(path) if path.startswith("./") else path
