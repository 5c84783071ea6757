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
import sys
import tempfile
from typing import TYPE_CHECKING, Optional

from doctor import __version__
from doctor.findings import Finding

if TYPE_CHECKING:
    from doctor.config import Settings
    from doctor.engine import FileResult
    from doctor.registry import Rule

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


def code_fingerprint(rules: list[type["Rule"]]) -> str:
    """doctor's version plus the size and mtime of its own modules and of the rules' modules.

    The version alone is not enough: an editable install (or a rule plugin) changes behaviour without a
    version bump, and a stale cache that hides a finding is worse than no cache. Stat calls on a few dozen
    files cost well under a millisecond.
    """
    files: set[str] = set()
    package_dir = os.path.dirname(os.path.abspath(__file__))
    for folder, _dirs, names in os.walk(package_dir):
        if os.path.basename(folder) in ("__pycache__", "probe"):
            continue
        files.update(os.path.join(folder, n) for n in names if n.endswith(".py"))
    for rule in rules:
        module = sys.modules.get(rule.__module__)
        path = getattr(module, "__file__", None)
        if path:
            files.add(os.path.abspath(path))
    h = hashlib.sha256(__version__.encode())
    for path in sorted(files):
        try:
            st = os.stat(path)
        except OSError:
            continue
        h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


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
    # No fsync: a cache entry lost in a crash is just a miss, but a half-written one must never be read.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class ResultCache:
    """Lookups and stores of ``FileResult`` by file content. ``get`` remembers the key that ``put`` uses."""

    def __init__(self, folder: str, settings: "Settings", rules: list[type["Rule"]]) -> None:
        self.folder = folder
        self.root = os.path.abspath(settings.root)
        self.hits = 0
        self.misses = 0
        h = hashlib.sha256()
        h.update(code_fingerprint(rules).encode())
        h.update(b"\0" + settings.fingerprint().encode())
        h.update(b"\0" + ",".join(sorted(r.name for r in rules)).encode())
        self._salt = h.digest()
        self._keys: dict[str, str] = {}

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
        from doctor.engine import FileResult

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
        payload = {"findings": [f.to_dict() for f in result.findings], "skipped": result.skipped}
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
    return ResultCache(folder, settings, rules)
