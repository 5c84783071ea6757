"""Writing files without ever leaving a half-written one behind."""

from __future__ import annotations

import os
import tempfile


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write to a temporary file in the same folder, keep the file mode (a new file gets the usual one, the
    umask respected), then rename over the target.

    ``durable=False`` skips the fsync: right for caches, where an entry lost in a crash is only a miss
    (a half-written one can still never be read).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = new_file_mode()  # mkstemp creates 0600: give a new file the mode open() would
    fd, tmp = tempfile.mkstemp(prefix=".doctor-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))
