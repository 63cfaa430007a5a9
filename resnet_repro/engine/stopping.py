"""SIGINT and SIGTERM as a request to stop: the training loop reads a flag after each step, finishes it and writes
a checkpoint, instead of dying mid-write. The one place that installs and restores the process's handlers: the
parent of `--jobs` children (resnet_repro.launch.local) installs its forwarding handler through `handling`."""

import contextlib
import signal
import time

from tqdm import tqdm

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_active = []  # the flag of the stop_requests block this process is in


@contextlib.contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag that the loop reads after each step; a second SIGINT stops at once, unless it
    comes within a second of the first (one Ctrl-C can arrive twice: from the terminal and forwarded by `uv run`).
    Nested blocks share the outer one's flag: the runs of one process stop on the first signal it got."""
    if _active:
        yield _active[-1]
        return
    flag = {"signal": None, "at": 0.0}
    with handling(_stop_handler(flag)):
        _active.append(flag)
        try:
            yield flag
        finally:
            _active.pop()


def requested():
    """The signal this process was already asked to stop by (a stop_requests block's flag), or None."""
    return _active[-1]["signal"] if _active else None


def stop_requests_until_exit(main):
    """main()'s exit status, with SIGINT/SIGTERM handled for the whole process (a command's __main__): every
    stop_requests block shares one flag, so the first signal decides; once main returns they are ignored, as
    the interpreter's shutdown would put the default handlers back and a late SIGTERM kill it (-15, not 130)."""
    flag = {"signal": None, "at": 0.0}
    _install(_stop_handler(flag))
    _active.append(flag)
    code = main()
    _install(signal.SIG_IGN)
    return code


@contextlib.contextmanager
def handling(handler):
    """While the block runs, SIGINT and SIGTERM call handler(signum, frame); then the previous handlers are back.
    Outside the main thread, where Python delivers no signal, nothing changes."""
    previous = _install(handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def exit_code(signal_name):
    """A process stopped by the signal SIGINT or SIGTERM exits 128 + its number: 130, 143."""
    return 128 + signal.Signals[signal_name].value


def _stop_handler(flag):
    def handler(signum, frame):
        if flag["signal"] is not None:
            if signum == signal.SIGINT and time.monotonic() - flag["at"] > 1.0:
                raise KeyboardInterrupt
            return
        flag["signal"], flag["at"] = signal.Signals(signum).name, time.monotonic()
        tqdm.write(f"{flag['signal']}: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)")

    return handler


def _install(handler):
    """handler for SIGINT and SIGTERM; {signal: the handler it replaced} ({} outside the main thread)."""
    previous = {}
    try:
        for s in SIGNALS:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: no signal handling
        pass
    return previous
