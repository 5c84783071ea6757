"""torchrun, as the probe starts it: ``python -m doctor.probe.torchrun ARGS`` is ``python -m torch.distributed.run
ARGS`` (the launcher itself, unchanged), except that on Linux it gets SIGTERM when the probe that started it dies,
so that it stops its workers (which die with it in turn, see ``doctor.probe.child``): a killed probe leaves no
launcher and no rank running.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the probe died before prctl
            sys.exit(1)
    except (OSError, AttributeError):
        pass


def main() -> None:
    _die_with_parent()
    sys.argv[0] = "torchrun"
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
