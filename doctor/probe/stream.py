"""The child-to-parent event channel: one JSON object per line on a dedicated file descriptor.

Never stdout: the user's script prints there. Writes go straight to the descriptor (no buffering), so
what was written before a segfault or a kill is still read by the parent.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

#: Environment variable through which the parent tells the child which descriptor to write to.
FD_ENV = "DOCTOR_PROBE_FD"
#: Distributed mode: the parent's Unix socket that every rank connects to (torchrun does not pass descriptors
#: on to its workers), and the folder where each rank's stacks are dumped when the parent asks (a hang).
SOCKET_ENV = "DOCTOR_PROBE_SOCKET"
STACKS_ENV = "DOCTOR_PROBE_STACKS"


def stack_signal() -> int:
    """The signal on which a rank dumps the Python stacks of all its threads (``faulthandler``, which works even
    while the rank is blocked inside a C call such as a collective): a real-time signal where there are some,
    since scripts and cluster schedulers use SIGUSR1/SIGUSR2 for their own purposes."""
    import signal

    rtmin = getattr(signal, "SIGRTMIN", None)
    return int(rtmin) + 4 if rtmin is not None else int(signal.SIGUSR2)


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: send them as strings the parent turns back into floats."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def restore(value: Any) -> Any:
    """Inverse of ``_clean``: "nan"/"inf"/"-inf" strings become floats again."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {k: restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v) for v in value]
    return value


class Emitter:
    """Writes events to a file descriptor; silently stops if the parent has gone away."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False

    def emit(self, event: str, **payload: Any) -> None:
        if self.broken:
            return
        payload["ev"] = event
        self.write_line(json.dumps(_clean(payload), separators=(",", ":"), default=str))

    def write_line(self, text: str) -> None:
        """One event already serialised as JSON (the per-step hot path builds its small line itself)."""
        if self.broken:
            return
        data = (text + "\n").encode()
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:  # the parent closed the pipe (it killed us or died): nothing to report to
            self.broken = True


def parse_line(line: bytes) -> dict[str, Any] | None:
    """One event from one line, or None for a torn/garbled line (e.g. the child was killed mid-write)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return restore(obj) if isinstance(obj, dict) else None
