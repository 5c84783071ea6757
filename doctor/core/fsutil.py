"""Writing files without ever leaving a half-written one behind, with the modes and owners people expect."""

from __future__ import annotations

import os
import tempfile
from typing import Optional


def current_umask() -> int:
    """The process's umask (Linux reports it without changing it; elsewhere it is set and put back at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process umask."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write to a temporary file in the same folder, then rename it over the target.

    A new file gets the mode any program would create it with (0666 less the umask), not the 0600 of a
    temporary file; an existing file keeps its mode, and its owner and group where we may set them.
    ``durable=False`` skips the fsync: right for caches, where an entry lost in a crash is only a miss (a
    half-written one can still never be read).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        st = None
    # mkstemp creates 0600: a new file gets the mode open() would give it
    mode = (st.st_mode & 0o7777) if st is not None else new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=".doctor-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if st is not None:
            _keep_owner(tmp, st)
        os.chmod(tmp, mode)  # after chown, which may clear set-id bits
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _keep_owner(tmp: str, st: os.stat_result) -> bool:
    """Give ``tmp`` the owner and group of ``st``; False when that is not allowed."""
    here = os.stat(tmp)
    if (here.st_uid, here.st_gid) == (st.st_uid, st.st_gid):
        return True
    try:
        os.chown(tmp, st.st_uid, st.st_gid)
    except (OSError, AttributeError):
        return False
    return True


def replace_contents(path: str, data: bytes) -> str:
    """Give the existing file ``path`` the content ``data``, keeping what makes it that file.

    Normally a new file is written and renamed over it (atomic: never half-written). That would break hard
    links (the other names keep the old content) and give the file our owner, so when the file has other
    links, or when its owner or group cannot be given to the new file, it is rewritten in place instead.
    Returns how it was written: ``"renamed"`` or ``"in place"``.
    """
    st = os.stat(path)
    if st.st_nlink == 1:
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".doctor-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if _keep_owner(tmp, st):
                os.chmod(tmp, st.st_mode & 0o7777)
                os.replace(tmp, path)
                return "renamed"
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    # In place: the same inode, so every hard link, the owner, group and mode stay as they are.
    with open(path, "r+b") as fh:
        fh.write(data)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())
    return "in place"


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))
