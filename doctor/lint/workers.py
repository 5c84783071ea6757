"""Worker processes that never outlive the run that started them.

A ``ProcessPoolExecutor`` worker blocks on its task queue; when the parent is killed (SIGKILL, or SIGTERM,
whose default action is to die without cleanup) nothing tells the worker, and it waits forever. Each worker
therefore asks the kernel for a signal when its parent dies (Linux ``PR_SET_PDEATHSIG``) and, wherever that
is not available, watches its parent id from a daemon thread and leaves when it changes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator

#: Seconds between two looks at the parent's id (the fallback where the kernel cannot tell us).
WATCH_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker as soon as ``parent`` is gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before we could ask
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="doctor-parent-watch", daemon=True).start()


def usable_cores() -> int:
    """Cores this process may run on (a CI container often gets fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def pool_map(fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int) -> Iterator[Any]:
    """``map(fn, tasks)`` in ``workers`` processes, in order; the workers end with this process."""
    # Imported here: a pre-commit run on a few files never pays for multiprocessing's imports.
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        yield from pool.map(fn, tasks)
