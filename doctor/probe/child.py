"""The child process: install the hooks, run the user's script unmodified as ``__main__``, report how it ended.

Started by the runner as ``python -m doctor.probe.child --options JSON -- SCRIPT ARGS...`` (the
``ProbeOptions`` of this run, serialised once) with the event descriptor in ``$DOCTOR_PROBE_FD``. Exit codes of the child itself: 0 script finished or stopped,
1 script failed, 3 usage error (``--device cuda`` without a GPU).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
import warnings
from typing import Any, Optional

T0 = time.perf_counter()

from doctor.probe.options import ProbeOptions  # noqa: E402  (timing starts before imports)
from doctor.probe.stream import FD_ENV, SOCKET_ENV, STACKS_ENV, Emitter, stack_signal  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 3
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: What torchrun tells each worker about its place in the job.
RANK_VARS = {"RANK": "rank", "LOCAL_RANK": "local_rank", "WORLD_SIZE": "world_size",
             "LOCAL_WORLD_SIZE": "local_world_size", "GROUP_RANK": "node_rank"}
_KEEP: list[Any] = []  # the rank's socket and stack file: open for the life of the process


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="doctor.probe.child")
    ap.add_argument("--options", default="{}", help="ProbeOptions as JSON")
    ap.add_argument("script")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    return ap.parse_args(argv)


def _user_tb(exc: BaseException, script_path: str) -> Any:
    """The traceback from the first frame in the user's script (the whole one if the script has none)."""
    tb = exc.__traceback__
    while tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename) != os.path.realpath(script_path):
        tb = tb.tb_next
    return tb if tb is not None else exc.__traceback__


def _error(exc: BaseException, script_path: str) -> dict[str, Any]:
    from doctor.probe.hooks import user_site

    frames = traceback.extract_tb(exc.__traceback__)
    site = user_site(script_path, list(frames))
    path, line = site if site else (None, None)
    if isinstance(exc, SyntaxError) and exc.filename:
        path, line = exc.filename, exc.lineno
    message = _ANSI.sub("", str(exc))  # torch.load's weights_only message carries terminal bold codes
    oom = type(exc).__name__ == "OutOfMemoryError" or "out of memory" in message.lower()
    tb = [_ANSI.sub("", ln) for ln in traceback.format_exception(type(exc), exc, _user_tb(exc, script_path))]
    return {
        "type": type(exc).__name__,
        "message": message.splitlines()[0][:500] if message else "",
        "path": path,
        "line": line,
        "oom": oom,
        "traceback": [ln.rstrip("\n") for ln in tb][-12:],
    }


def main(argv: Optional[list[str]] = None) -> int:
    opts = _parse(sys.argv[1:] if argv is None else argv)
    options = ProbeOptions.from_json(opts.options)
    emitter = _channel()
    script = os.path.abspath(opts.script)
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args

    # The script's folder comes first on the path, as for `python script.py` (not our working folder, which
    # `-m` put there): a local module shadowing torch is then the script's own, and said so in words.
    sys.path[0] = os.path.dirname(script)
    problem = _torch_problem()
    if problem:
        emitter.emit("usage_error", message=problem)
        return EXIT_USAGE
    import torch

    cuda = torch.cuda.is_available()
    if options.device == "cuda" and not cuda:
        emitter.emit("usage_error", message="--device cuda: no CUDA device is available to PyTorch")
        return EXIT_USAGE
    # "cpu" until the optimizer's parameters turn out to live on a GPU (the hooks then send a device event).
    device = {"type": "cpu", "cuda_available": cuda, "torch": torch.__version__}

    from doctor.probe.hooks import Probe, ProbeStop

    probe = Probe(emitter, script, options)
    _capture_warnings(emitter)
    _flush_on_sigterm(probe, emitter, script)
    probe.install()
    emitter.emit("start", pid=os.getpid(), device=device, startup_s=time.perf_counter() - T0, python=sys.version.split()[0])

    # The script sees itself as the program: its own argv, its own folder first on sys.path, the user's cwd.
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(script)
    import runpy

    outcome: dict[str, Any] = {"kind": "completed", "code": 0}
    try:
        runpy.run_path(script, run_name="__main__")
    except ProbeStop:
        outcome = {"kind": "stopped", "code": 0}
    except SystemExit as exc:
        code = exc.code
        if probe.done:
            outcome = {"kind": "stopped", "code": 0}
        elif code is None or code == 0:
            outcome = {"kind": "completed", "code": 0}
        else:
            outcome = {"kind": "exit", "code": code if isinstance(code, int) else 1, "error": {
                "type": "SystemExit", "message": f"the script called sys.exit({code!r})", "path": None, "line": None,
                "oom": False, "traceback": []}}
    except BaseException as exc:  # noqa: BLE001 - everything the script raises is the report
        if probe.done:
            outcome = {"kind": "stopped", "code": 0}
        else:
            outcome = {"kind": "crash", "code": 1, "error": _error(exc, script)}
            # what Python itself would have shown, from the script's first frame on (not runpy's or the probe's)
            traceback.print_exception(type(exc), exc, _user_tb(exc, script))
    try:
        probe.finish()
    finally:
        emitter.emit("exit", **outcome)
        probe.uninstall()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    return EXIT_OK if outcome["code"] == 0 else EXIT_FAILED


def _torch_problem() -> Optional[str]:
    """Why ``import torch`` does not give PyTorch here (a local ``torch.py`` shadowing it...), or None."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - whatever a broken or shadowed torch raises
        return f"`import torch` failed before the script ran: {type(exc).__name__}: {exc}"
    where = getattr(torch, "__file__", None) or "(a namespace package)"
    if not all(hasattr(torch, name) for name in ("cuda", "nn", "optim", "__version__")):
        return (
            f"`import torch` loads {where}, not PyTorch: a file or folder named torch next to the script (or on "
            "PYTHONPATH) shadows the package; rename it"
        )
    return None


def _channel() -> Emitter:
    """The event channel to the parent: the descriptor it passed (one process), or, under torchrun, its Unix
    socket, which every rank connects to and introduces itself on (rank, local rank, world size, pid)."""
    path = os.environ.pop(SOCKET_ENV, None)
    if not path:
        fd = int(os.environ.get(FD_ENV, "-1"))
        return Emitter(fd) if fd >= 0 else Emitter(os.open(os.devnull, os.O_WRONLY))
    import socket

    _die_with_parent()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    _KEEP.append(sock)
    emitter = Emitter(sock.fileno())
    info: dict[str, Any] = {"pid": os.getpid()}
    for var, key in RANK_VARS.items():
        value = os.environ.get(var, "")
        info[key] = int(value) if value.lstrip("-").isdigit() else None
    stacks = os.environ.pop(STACKS_ENV, None)
    if stacks and info["rank"] is not None:
        import faulthandler

        fh = open(os.path.join(stacks, f"rank-{info['rank']}.txt"), "w")  # noqa: SIM115 - kept open on purpose
        _KEEP.append(fh)
        faulthandler.register(stack_signal(), file=fh, all_threads=True, chain=False)
        info["stack_signal"] = stack_signal()
    emitter.emit("rank", **info)
    return emitter


def _die_with_parent() -> None:
    """A rank dies with the launcher that started it (Linux): nothing of the run outlives a killed probe."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the launcher died before prctl: nothing to report to
            os._exit(EXIT_FAILED)
    except (OSError, AttributeError):
        pass


def _flush_on_sigterm(probe: Any, emitter: Emitter, script: str) -> None:
    """On SIGTERM (the parent's timeout, or torchrun stopping the other ranks after one failed), send the steps
    not flushed yet and where the script was, then leave at once (the script may be stuck)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        try:
            probe.finish()
            error: dict[str, Any] = {"type": "SIGTERM", "message": "the script was stopped by SIGTERM", "path": None,
                                     "line": None, "oom": False, "traceback": []}
            try:
                from doctor.probe.hooks import user_site

                stack = list(traceback.extract_stack(frame)) if frame is not None else []
                site = user_site(script, stack)
                first = next((i for i, fr in enumerate(stack) if os.path.realpath(fr.filename) == os.path.realpath(script)), 0)
                stack = stack[first:]  # from the script's first frame, as a crash's traceback is shown
                if site:
                    error["path"], error["line"] = site
                error["traceback"] = ["Stack (most recent call last):"] + [ln.rstrip("\n") for ln in traceback.format_list(stack)][-11:]
            except Exception:
                pass
            emitter.emit("exit", kind="terminated", code=124, error=error)
        finally:
            os._exit(124)

    signal.signal(signal.SIGTERM, handler)


def _capture_warnings(emitter: Emitter) -> None:
    """Stream Python warnings (e.g. the lr_scheduler-before-optimizer one) and still show them as usual."""
    original = warnings.showwarning

    def showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        emitter.emit("warning", category=getattr(category, "__name__", str(category)), message=str(message), path=filename, line=lineno)
        original(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


if __name__ == "__main__":
    code = main()
    # os._exit: a stopped script may leave non-daemon threads (DataLoader workers, loggers) that would hang exit.
    os._exit(code)
