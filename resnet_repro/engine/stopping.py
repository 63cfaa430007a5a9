"""SIGINT and SIGTERM as a request to stop: the training loop reads a flag after each step, finishes it and writes
a checkpoint, instead of dying mid-write."""

import contextlib
import signal
import time

from tqdm import tqdm

_active = []  # the flag of the stop_requests block this process is in


@contextlib.contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag that the loop reads after each step; a second SIGINT stops at once, unless it
    comes within a second of the first (one Ctrl-C can arrive twice: from the terminal and forwarded by `uv run`).
    Nested blocks share the outer one's flag: the runs of one process stop on the first signal it got."""
    if _active:
        yield _active[-1]
        return
    flag, installed = _install_stop_handlers()
    _active.append(flag)
    try:
        yield flag
    finally:
        _active.pop()
        for s, previous in installed.items():
            signal.signal(s, previous)


def requested():
    """The signal this process was already asked to stop by (a stop_requests block's flag), or None."""
    return _active[-1]["signal"] if _active else None


def stop_requests_until_exit(main):
    """main()'s exit status, with SIGINT/SIGTERM handled for the whole process (a command's __main__): every
    stop_requests block shares one flag, so the first signal decides; once main returns they are ignored, as
    the interpreter's shutdown would put the default handlers back and a late SIGTERM kill it (-15, not 130)."""
    _active.append(_install_stop_handlers()[0])
    code = main()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    return code


def _install_stop_handlers():
    flag = {"signal": None, "at": 0.0}

    def handler(signum, frame):
        if flag["signal"] is not None:
            if signum == signal.SIGINT and time.monotonic() - flag["at"] > 1.0:
                raise KeyboardInterrupt
            return
        flag["signal"], flag["at"] = signal.Signals(signum).name, time.monotonic()
        tqdm.write(f"{flag['signal']}: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)")

    installed = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            installed[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: no signal handling
        pass
    return flag, installed
