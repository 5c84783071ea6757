"""Result cache: a file's findings, keyed by its content, doctor's code, the configuration and the rules.

Location: ``--cache-dir``, else ``$DOCTOR_CACHE_DIR``, else ``cache-dir`` from the config, else
``.doctor_cache/`` in the config root (the folder of the config file, or the current folder). The folder
gets a ``CACHEDIR.TAG`` (backup tools skip it) and a ``.gitignore`` containing ``*`` (git ignores it) the
first time it is created. Deleting it at any time is safe. A corrupt or unreadable entry is a cache miss,
never an error; a folder that cannot be created means the run is simply not cached.

Parsing and analysis are what we save: a lookup reads the file and hashes its bytes (cheap), then reads
one small JSON entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Optional

from doctor import __version__
from doctor.analysis.project import file_signature, tree_fingerprint
from doctor.core.findings import Finding
from doctor.core.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from doctor.lint.config import Settings
    from doctor.lint.engine import FileResult, RunResult
    from doctor.lint.registry import Rule

DEFAULT_FOLDER = ".doctor_cache"
ENV_VAR = "DOCTOR_CACHE_DIR"
#: Bumped when the entry layout changes; entries live under a folder named after it.
CACHE_FORMAT = "v1"

_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by doctor.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


def default_folder(settings: "Settings") -> str:
    """Where the cache lives when neither ``--cache-dir`` nor the config names a folder."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    if settings.cache_dir:
        return settings.cache_dir
    return os.path.join(settings.root, DEFAULT_FOLDER)


def _code_folders() -> list[str]:
    """doctor's own package and the rules package (installed as ``doctor.rules``, maybe from another folder)."""
    import importlib.util

    folders = [os.path.dirname(os.path.abspath(__file__))]
    try:
        spec = importlib.util.find_spec("doctor.rules")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folders.append(os.path.abspath(location))
    return folders


def code_fingerprint() -> str:
    """doctor's version plus the size and mtime of its own modules and of the rule modules.

    The version alone is not enough: an editable install changes behaviour without a version bump, and a stale
    cache that hides a finding is worse than no cache. It is computed from the files on disk, without importing
    the rules, so that a fully cached run never imports them; stat calls on a few dozen files cost about 1 ms.
    """
    files: set[str] = set()
    for top in _code_folders():
        for folder, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "probe")]
            files.update(os.path.join(folder, n) for n in names if n.endswith(".py"))
    h = hashlib.sha256(__version__.encode())
    for path in sorted(files):
        try:
            st = os.stat(path)
        except OSError:
            continue
        h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _selection_key(code: str, settings: "Settings") -> str:
    selectors = repr((settings.select, settings.ignore, settings.extend_select))
    return hashlib.sha256(f"{code}\0{selectors}".encode()).hexdigest()[:32]


def _prepare_folder(folder: str) -> bool:
    """Create the cache folder with its tag and .gitignore; False when that is impossible."""
    try:
        fresh = not os.path.isdir(folder)
        os.makedirs(os.path.join(folder, CACHE_FORMAT), exist_ok=True)
        for name, text in (("CACHEDIR.TAG", _CACHEDIR_TAG), (".gitignore", "# Created by doctor; the cache is never committed.\n*\n")):
            target = os.path.join(folder, name)
            if fresh or not os.path.exists(target):
                _write_atomic(target, text.encode())
    except OSError:
        return False
    return True


def _write_atomic(path: str, data: bytes) -> None:
    atomic_write_bytes(path, data, durable=False)


class ResultCache:
    """Lookups and stores of ``FileResult`` by file content. ``get`` remembers the key that ``put`` uses."""

    def __init__(self, folder: str, settings: "Settings", rule_names: list[str], code: Optional[str] = None) -> None:
        self.folder = folder
        self.root = os.path.abspath(settings.root)
        self.hits = 0
        self.misses = 0
        h = hashlib.sha256()
        h.update((code or code_fingerprint()).encode())
        h.update(b"\0" + settings.fingerprint().encode())
        h.update(b"\0" + ",".join(sorted(rule_names)).encode())
        self._salt = h.digest()
        self._keys: dict[str, str] = {}
        self._trees: dict[str, str] = {}

    def _tree(self, root: str) -> str:
        if root not in self._trees:
            self._trees[root] = tree_fingerprint(root)
        return self._trees[root]

    def _dependencies_unchanged(self, deps: dict) -> bool:
        """The other files a cached result was computed from are as they were then."""
        for path, sig in deps.get("files", {}).items():
            if file_signature(path) != sig:
                return False
        for root, digest in deps.get("roots", {}).items():
            if self._tree(root) != digest:
                return False
        return True

    def _key(self, path: str) -> Optional[str]:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        h = hashlib.sha256(self._salt)
        # The path matters: per-file-ignores depend on it, and so does .py versus .ipynb decoding.
        rel = os.path.relpath(os.path.abspath(path), self.root)
        h.update(b"\0" + rel.encode("utf-8", "surrogateescape") + b"\0")
        h.update(data)
        return h.hexdigest()

    def _entry(self, key: str) -> str:
        return os.path.join(self.folder, CACHE_FORMAT, key[:2], key[2:] + ".json")

    def get(self, path: str) -> Optional["FileResult"]:
        """The cached result for this file as it is now, or None."""
        from doctor.lint.engine import FileResult

        key = self._key(path)
        if key is None:
            return None
        self._keys[path] = key
        try:
            with open(self._entry(key), encoding="utf-8") as fh:
                data = json.load(fh)
            # Findings carry the path as it was given; the same file may be named differently this time.
            findings = [Finding.from_dict({**d, "path": path}) for d in data["findings"]]
            skipped = bool(data.get("skipped", False))
            if not self._dependencies_unchanged(data.get("depends", {})):
                self.misses += 1
                return None
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.misses += 1  # corrupt or unreadable: treat as a miss, the next put overwrites it
            return None
        self.hits += 1
        return FileResult(path=path, findings=findings, skipped=skipped, cached=True)

    def put(self, path: str, result: "FileResult") -> None:
        """Store a result under the key ``get`` computed for this path (the content that was checked)."""
        if result.error is not None or result.cached:
            return  # errors (unreadable file, crashing rule) must show up again next run
        key = self._keys.get(path) or self._key(path)
        if key is None:
            return
        payload: dict = {"findings": [f.to_dict() for f in result.findings], "skipped": result.skipped}
        if result.consulted is not None:
            payload["depends"] = {
                "files": {p: file_signature(p) for p in sorted(result.consulted.files)},
                "roots": {r: self._tree(r) for r in sorted(result.consulted.roots)},
            }
        target = self._entry(key)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _write_atomic(target, json.dumps(payload, separators=(",", ":")).encode("utf-8"))
        except OSError:
            pass  # a read-only or full disk must not fail the check


def open_cache(folder: Optional[str], settings: "Settings", rules: list[type["Rule"]]) -> Optional[ResultCache]:
    """The cache in ``folder`` (or the default location), or None when it cannot be created."""
    folder = folder or default_folder(settings)
    if not _prepare_folder(folder):
        return None
    code = code_fingerprint()
    names = [r.name for r in rules]
    # Remember which rules these (valid) selectors enable,
    # so that the next run over unchanged files can answer from the cache without importing any rule.
    memo = os.path.join(folder, CACHE_FORMAT, f"selection-{_selection_key(code, settings)}.json")
    from doctor.lint.registry import validate_selectors

    valid = not validate_selectors(settings.select + settings.ignore + settings.extend_select)
    if valid and _read_selection(memo) != names:  # missing or corrupt: (re)write it
        try:
            _write_atomic(memo, json.dumps({"rules": names}).encode())
        except OSError:
            pass
    return ResultCache(folder, settings, names, code)


def _read_selection(memo: str) -> Optional[list[str]]:
    """The rule names a selection memo records, or None when it is missing or corrupt."""
    try:
        with open(memo, encoding="utf-8") as fh:
            names = json.load(fh)["rules"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def cached_run(folder: Optional[str], settings: "Settings", paths: list[str]) -> Optional["RunResult"]:
    """The whole run from the cache when every file is unchanged since it was checked with these settings.

    None as soon as anything is missing (no cache, selectors never seen, one changed file); the caller then
    does a normal run, which loads the rules and fills the cache.
    """
    from doctor.lint.engine import RunResult

    folder = folder or default_folder(settings)
    code = code_fingerprint()
    names = _read_selection(os.path.join(folder, CACHE_FORMAT, f"selection-{_selection_key(code, settings)}.json"))
    if names is None:
        return None
    cache = ResultCache(folder, settings, names, code)
    results = []
    for path in paths:
        hit = cache.get(path)
        if hit is None:
            return None
        results.append(hit)
    return RunResult(files=results)
