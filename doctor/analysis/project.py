"""The project around a file: its local modules, their classes and functions, and who calls what.

A training script rarely holds its whole story: the model class sits in ``model.py``, the epoch loop in
``engine.py``, a loss scaler in ``utils/misc.py``, and ``main.py`` calls them. ``Project`` answers, for the
files of one project (the folder above the file's top-level package, or the script's own folder):

* which file a local import names (``from .model import Net``, ``import utils.misc as misc``),
* the ``Program`` (tables) of that file, parsed once per process and cached,
* every call site of a function or method across the project (reverse lookups for "who calls this step
  function, and in a loop?" and "what is this parameter at its call sites?").

Everything is lazy: nothing is read until a rule's question needs it, and each file is read and parsed at
most once per process. The files consulted for a checked file are recorded (``Project.consulted``) so that the
result cache can tell when a finding depends on another file that changed.
"""

from __future__ import annotations

import ast
import os
import re
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from doctor.core.source import decode_python

#: The tables of one file (``doctor.analysis.program.Program``); the project builds them through the factory it
#: is given, so that this module does not depend on the program module (which depends on it).
Program = Any

#: Folders that never hold the project's own modules.
_SKIP_DIRS = {
    ".git", ".hg", ".svn", ".venv", "venv", "env", "build", "dist", "site-packages", "node_modules", "__pycache__",
    ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints", ".doctor_cache",
}
#: Bounds that keep a reverse lookup cheap on huge trees.
MAX_FILES = 5000
#: A bigger file is not read as another file of the project (generated code, data tables): doctor checks such a
#: file in parts (``doctor.lint.parts``, from the same size), and parsing it whole for each part would make big
#: files quadratic.
MAX_FILE_BYTES = 1024 * 1024
#: Programs of other files kept in memory per process (parsed trees are large; re-parsing is cheap).
MAX_PROGRAMS = 32
#: Projects kept in memory at once (each with up to MAX_INDEX_BYTES of raw source and MAX_PROGRAMS tables).
MAX_PROJECTS = 2
#: Raw bytes of project files kept for reverse look-ups (a bigger project is searched by reading files again).
MAX_INDEX_BYTES = 64 * 1024 * 1024
#: A name called from more files than this is not followed to its callers.
MAX_CALLER_FILES = 8
#: Reverse look-ups search the project's bytes name by name until they have read it this many times over; then
#: one pass indexes every called name (a pass costs about as much as 70 searches, and a big project asks for
#: thousands of names: searching each would be quadratic in the project's size).
INDEX_AFTER = 16
#: A call of a name: the whole word, then an opening parenthesis.
_CALLED = re.compile(rb"\b(\w++)\s*+\(")
_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
#: Bytes that any file doing training work contains (a backward, a step, a clearing...).
_TRAINS = re.compile(rb"\.(backward|step|zero_grad|manual_backward|clip_grad_norm_|clip_grad_value_|unscale_)\s*\(|\.grad\b")


@dataclass
class Consulted:
    """What the analysis of one file read of other files: the result cache keys a file's findings by these."""

    #: Other files whose content was read (forward: imports, classes, helpers).
    files: set[str] = field(default_factory=set)
    #: Project folders that were searched as a whole (reverse lookups: every caller of a function).
    roots: set[str] = field(default_factory=set)


_RECORDING: list[Consulted] = []


@contextmanager
def recording() -> Iterator[Consulted]:
    """Record which other files and project folders the analysis reads inside the ``with`` block."""
    seen = Consulted()
    _RECORDING.append(seen)
    try:
        yield seen
    finally:
        _RECORDING.remove(seen)


def _signature(path: str) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class CallSite:
    """A call in one of the project's files."""

    program: Program
    call: ast.Call


class Project:
    """The local modules of one project, read lazily and cached per process."""

    #: The most recently used projects (files are checked folder by folder, so a run rarely returns to one).
    _cache: "OrderedDict[str, Project]" = OrderedDict()

    def __init__(self, root: str, factory: Callable[..., Program]) -> None:
        self.root = root
        self.factory = factory
        #: path -> (file signature when read, its tables); the most recently used MAX_PROGRAMS are kept.
        self._programs: "OrderedDict[str, tuple[Optional[tuple[int, int]], Optional[Program]]]" = OrderedDict()
        self._files: Optional[tuple[Optional[tuple[int, int]], list[str]]] = None
        #: name -> files that call something of that name / define a function or method of that name.
        self._blobs: Optional[list[tuple[str, Optional[bytes]]]] = None
        #: Bytes of the project in all, and how many the searches have read so far.
        self._blob_bytes = 0
        self._searched = 0
        #: Called name -> positions in ``_blobs`` of the files calling it (built after INDEX_AFTER passes).
        self._called: Optional[dict[bytes, list[int]]] = None
        self._modules: dict[tuple[str, str, int], Optional[str]] = {}
        self._trains: dict[str, tuple[Optional[tuple[int, int]], bool]] = {}
        #: name -> the files calling it (not their programs: those stay in the bounded cache above).
        self._callers: dict[str, list[str]] = {}

    # -- where a file belongs ---------------------------------------------------------------------------
    @classmethod
    def for_file(cls, path: str, factory: Callable[..., Program]) -> "Project":
        """The (cached) project of ``path``; ``factory(tree, path, project=...)`` builds a file's tables."""
        root = project_root(path)
        project = cls._cache.get(root)
        if project is None:
            project = cls._cache[root] = Project(root, factory)
            while len(cls._cache) > MAX_PROJECTS:
                cls._cache.popitem(last=False)  # its raw bytes and tables go with it
        else:
            cls._cache.move_to_end(root)
        return project

    @classmethod
    def forget(cls) -> None:
        """Drop every cached project (files on disk changed: tests, long-lived processes)."""
        cls._cache.clear()

    # -- imports ----------------------------------------------------------------------------------------
    def module_file(self, importer: str, module: str, level: int = 0) -> Optional[str]:
        """The local file that ``import module`` (``level`` dots) names from ``importer``, or None (looked up
        on disk once per folder and module: a big file asks for the same modules thousands of times)."""
        here = os.path.dirname(os.path.abspath(importer))
        key = (here, module, level)
        if key not in self._modules:
            self._modules[key] = self._module_file(here, module, level)
        return self._modules[key]

    def _module_file(self, here: str, module: str, level: int) -> Optional[str]:
        if level:
            base = here
            for _ in range(level - 1):
                base = os.path.dirname(base)
            bases = [base]
        else:
            # The script's folder, the project root, and the folders above it (scripts in `tools/` import the
            # package at the repository root, which is on `sys.path` when they run).
            bases = [here, self.root]
            up = self.root
            for _ in range(3):
                parent = os.path.dirname(up)
                if parent == up:
                    break
                bases.append(parent)
                if any(os.path.exists(os.path.join(up, m)) for m in (".git", "pyproject.toml", "setup.py", "setup.cfg")):
                    break
                up = parent
        rel = module.replace(".", os.sep) if module else ""
        for base in bases:
            for cand in ((os.path.join(base, rel + ".py"), os.path.join(base, rel, "__init__.py")) if rel else (os.path.join(base, "__init__.py"),)):
                if os.path.isfile(cand):
                    return os.path.normpath(cand)
        return None

    def program(self, path: str) -> Optional[Program]:
        """The tables of a project file (None when it cannot be read or parsed); re-read when it changed."""
        path = os.path.normpath(os.path.abspath(path))
        for seen in _RECORDING:
            seen.files.add(path)
        sig = _signature(path)
        cached = self._programs.get(path)
        if cached is not None and cached[0] == sig:
            self._programs.move_to_end(path)
            return cached[1]
        self._programs[path] = (sig, None)  # recursion guard while it is being built
        text = self.text(path)
        program = None
        if text is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tree = ast.parse(text)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                tree = None
            if tree is not None:
                program = self.factory(tree, path, project=self)
        self._programs[path] = (sig, program)
        while len(self._programs) > MAX_PROGRAMS:
            self._programs.popitem(last=False)
        return program

    def consult(self, path: str) -> Optional[str]:
        """The text of a project file, recorded as consulted (a finding may depend on what it says)."""
        path = os.path.normpath(os.path.abspath(path))
        for seen in _RECORDING:
            seen.files.add(path)
        return self.text(path)

    def text(self, path: str) -> Optional[str]:
        sig = _signature(path)
        if sig is None or sig[0] > MAX_FILE_BYTES:
            return None
        try:
            with open(path, "rb") as fh:
                return decode_python(fh.read()).text
        except (OSError, ValueError):
            return None

    # -- reverse lookups --------------------------------------------------------------------------------
    def files(self) -> list[str]:
        """The project's ``.py`` files (bounded), skipping virtual environments and build folders."""
        sig = _signature(self.root)
        if self._files is None or self._files[0] != sig:
            out: list[str] = []
            for folder, dirs, names in os.walk(self.root):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info"))
                out.extend(os.path.normpath(os.path.join(folder, n)) for n in sorted(names) if n.endswith(".py"))
                if len(out) >= MAX_FILES:
                    break
            self._files = (sig, out[:MAX_FILES])
            self._callers.clear()
            self._blobs = None
            self._called = None
            self._modules.clear()
        return self._files[1]

    def may_train(self, path: str) -> bool:
        """Could code in ``path`` do training work (it mentions a backward, a step, a clearing)? A cheap byte scan,
        cached, that spares parsing modules that only hold utilities."""
        path = os.path.normpath(os.path.abspath(path))
        sig = _signature(path)
        cached = self._trains.get(path)
        if cached is not None and cached[0] == sig:
            return cached[1]
        data = _read(path)
        found = data is not None and _TRAINS.search(data) is not None
        self._trains[path] = (sig, found)
        return found

    def _load(self) -> None:
        """The raw bytes of the project's files, read once (up to MAX_INDEX_BYTES in all; the rest are read again
        for each search): reverse look-ups search them with ``bytes.find`` before parsing anything."""
        blobs: list[tuple[str, Optional[bytes]]] = []
        total = kept = 0
        for path in self.files():
            try:
                size = os.path.getsize(path)
                if size > MAX_FILE_BYTES:
                    continue
                total += size
                if kept + size > MAX_INDEX_BYTES:
                    blobs.append((path, None))
                    continue
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            kept += len(data)
            blobs.append((path, data))
        self._blobs = blobs
        self._blob_bytes = total
        self._searched = 0
        self._called = None

    def _index(self) -> None:
        """Every called name of the project, with the files calling it (one pass; the raw bytes are then let go)."""
        called: dict[bytes, list[int]] = {}
        for i, (path, data) in enumerate(self._blobs or ()):
            data = data if data is not None else _read(path)
            if data is None:
                continue
            for name in set(_CALLED.findall(data)):
                called.setdefault(name, []).append(i)
        self._called = called
        self._blobs = [(path, None) for path, _ in self._blobs or ()]

    def _files_calling(self, name: str) -> list[str]:
        """The files that call ``name`` (at most MAX_CALLER_FILES + 1 of them, in the project's file order)."""
        needle = name.encode("ascii", "replace")
        blobs = self._blobs or []
        if self._called is None and self._searched >= INDEX_AFTER * max(self._blob_bytes, 1):
            self._index()
        if self._called is not None:
            return [blobs[i][0] for i in self._called.get(needle, ())[: MAX_CALLER_FILES + 1]]
        # The literal first: a pattern starting with ``\b`` is searched byte by byte, twenty times slower.
        pattern = re.compile(re.escape(needle) + rb"\s*\(")
        out = []
        for path, data in blobs:
            data = data if data is not None else _read(path)
            if data is None:
                continue
            self._searched += len(data)
            if needle in data and any(m.start() == 0 or data[m.start() - 1] not in _WORD_BYTES for m in pattern.finditer(data)):
                out.append(path)
                if len(out) > MAX_CALLER_FILES:
                    break
        return out

    def calls_named(self, name: str, skip: Optional[str] = None) -> list[CallSite]:
        """Every call in the project whose callee is named ``name`` (``name(...)`` or ``x.name(...)``), except in
        the file ``skip`` (the file asking, which reads its own calls: parsing it again to skip them would double
        the work on every file)."""
        for seen in _RECORDING:
            seen.roots.add(self.root)
        self.files()
        if self._blobs is None:
            self._load()
        paths = self._callers.get(name)
        if paths is None:
            paths = self._files_calling(name)
            if len(paths) > MAX_CALLER_FILES:
                paths = []  # called all over the project: no single caller tells what it is (and reading them all costs)
            self._callers[name] = paths
        skipped = os.path.normpath(os.path.abspath(skip)) if skip else None
        sites: list[CallSite] = []
        for path in paths:
            if path == skipped:
                continue
            program = self.program(path)
            if program is None:
                continue
            for call in program.calls_to(name):
                sites.append(CallSite(program, call))
        return sites


def file_signature(path: str) -> Optional[list[int]]:
    """``[size, mtime_ns]`` of a file, or None when it is gone (what the result cache compares)."""
    sig = _signature(path)
    return list(sig) if sig is not None else None


def tree_fingerprint(root: str) -> str:
    """A digest of the names, sizes and modification times of a project's ``.py`` files: it changes when any
    of them is added, removed or edited (reverse lookups depend on all of them)."""
    import hashlib

    h = hashlib.sha256()
    count = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info"))
        for n in sorted(names):
            if n.endswith(".py"):
                p = os.path.join(folder, n)
                h.update(f"{p}\0{_signature(p)}\0".encode("utf-8", "surrogateescape"))
                count += 1
        if count >= MAX_FILES:
            break
    return h.hexdigest()


def project_root(path: str) -> str:
    """The folder whose files make up ``path``'s project: above its top-level package, or its own folder."""
    folder = os.path.dirname(os.path.abspath(path))
    top = None
    cur = folder
    while os.path.isfile(os.path.join(cur, "__init__.py")):
        top = cur
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    return os.path.normpath(os.path.dirname(top) if top else folder)


def in_package(path: str) -> bool:
    return os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(path)), "__init__.py"))


def _read(path: str) -> Optional[bytes]:
    """The file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None
