"""``[tool.doctor]`` in pyproject.toml (or a ``doctor.toml``/``.doctor.toml``), merged with the command line."""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from doctor.core.findings import Severity

DEFAULT_EXCLUDE = (
    ".git",
    ".hg",
    ".svn",
    ".bzr",
    ".venv",
    "venv",
    ".env",
    "__pycache__",
    "build",
    "dist",
    "site-packages",
    "node_modules",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".doctor_cache",
    ".ipynb_checkpoints",
    "*.egg-info",
)

_KNOWN_KEYS = {
    "select",
    "ignore",
    "extend-select",
    "per-file-ignores",
    "exclude",
    "extend-exclude",
    "fail-on",
    "respect-gitignore",
    "cache-dir",
}


class ConfigError(Exception):
    """A configuration problem the user must fix; reported with exit code 2."""


@dataclass(frozen=True)
class Settings:
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    extend_exclude: tuple[str, ...] = ()
    fail_on: Severity = Severity.ERROR
    respect_gitignore: bool = True
    cache_dir: Optional[str] = None
    #: Folder the config was found in; per-file-ignores and excludes are relative to it.
    root: str = "."
    config_path: Optional[str] = None

    def ignored_for(self, path: str) -> tuple[str, ...]:
        """Selectors ignored for one file by ``per-file-ignores``."""
        rel = relative_path(path, self.root)
        out: list[str] = []
        for pattern, codes in self.per_file_ignores:
            if glob_match(rel, pattern):
                out.extend(codes)
        return tuple(out)

    def fingerprint(self) -> str:
        """What a cached result depends on besides the file and doctor's version."""
        return repr((self.select, self.ignore, self.extend_select, self.per_file_ignores))


def relative_path(path: str, root: str) -> str:
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    except ValueError:
        rel = path
    return rel.replace(os.sep, "/")


def glob_match(rel: str, pattern: str) -> bool:
    pattern = pattern.replace(os.sep, "/")
    if fnmatch.fnmatch(rel, pattern):
        return True
    # A bare file or folder name matches anywhere (as in ruff).
    if "/" not in pattern:
        return fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern) or any(
            fnmatch.fnmatch(part, pattern) for part in rel.split("/")[:-1]
        )
    return fnmatch.fnmatch(rel, pattern.rstrip("/") + "/*")


def find_config(start: str) -> Optional[Path]:
    """The closest ``doctor.toml``, ``.doctor.toml`` or pyproject.toml with a ``[tool.doctor]`` table."""
    here = Path(start).resolve()
    if here.is_file():
        here = here.parent
    for folder in (here, *here.parents):
        for name in (".doctor.toml", "doctor.toml"):
            if (folder / name).is_file():
                return folder / name
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            # A pyproject.toml we cannot read might hold the [tool.doctor] table meant for this run: running
            # with the defaults (or a parent folder's config) instead would be a silent surprise.
            try:
                data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read {pyproject}: {getattr(exc, 'strerror', None) or exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"invalid TOML in {pyproject}: {exc}") from None
            tool = data.get("tool", {})
            if isinstance(tool, dict) and "doctor" in tool:
                return pyproject
    return None


def _as_list(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"'{key}' must be a string or a list of strings, got {value!r}")


def load_config(path: Path) -> Settings:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    table = data.get("tool", {}).get("doctor", {}) if path.name == "pyproject.toml" else data
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.doctor] in {path} must be a table")
    unknown = set(table) - _KNOWN_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in {path}: {', '.join(sorted(unknown))}")
    settings = Settings(root=str(path.parent), config_path=str(path))
    changes: dict[str, Any] = {}
    for key in ("select", "ignore", "extend-select", "extend-exclude"):
        if key in table:
            changes[key.replace("-", "_")] = _as_list(table[key], key)
    if "exclude" in table:
        changes["exclude"] = _as_list(table["exclude"], "exclude")
    if "per-file-ignores" in table:
        pfi = table["per-file-ignores"]
        if not isinstance(pfi, dict):
            raise ConfigError("'per-file-ignores' must be a table of glob = [codes]")
        changes["per_file_ignores"] = tuple((k, _as_list(v, f"per-file-ignores.{k}")) for k, v in pfi.items())
    if "fail-on" in table:
        try:
            changes["fail_on"] = Severity.parse(str(table["fail-on"]))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if "respect-gitignore" in table:
        changes["respect_gitignore"] = bool(table["respect-gitignore"])
    if "cache-dir" in table:
        changes["cache_dir"] = str(path.parent / str(table["cache-dir"]))
    return replace(settings, **changes)


def resolve_settings(paths: list[str], config: Optional[str]) -> Settings:
    if config:
        return load_config(Path(config))
    start = paths[0] if paths else "."
    if not os.path.exists(start):
        start = "."
    found = find_config(start)
    return load_config(found) if found else Settings(root=os.getcwd())
