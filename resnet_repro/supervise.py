"""Command lines run side by side within a time budget (resnet_repro.gpucheck's steps): each in a process group
of its own, their output into one log; at the deadline a SIGINT to each group, as Ctrl-C (the suite's runs then
write a checkpoint), and a SIGKILL `grace` seconds later."""

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Budget:
    """Seconds since the start and until the end of the call, by `clock` (a test moves it)."""

    def __init__(self, seconds, clock=time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    def elapsed(self):
        return self.clock() - self.start

    def left(self):
        return self.seconds - self.elapsed()


class Log:
    """Prints each line and appends it to gpucheck.log, stamped with the seconds since the start."""

    def __init__(self, path, budget):
        self.file, self.budget, self.lock = open(path, "a", buffering=1), budget, threading.Lock()

    def __call__(self, text, source=""):
        with self.lock:
            for line in str(text).splitlines() or [""]:
                stamped = f"[{self.budget.elapsed():6.1f}s] {source + '| ' if source else ''}{line}"
                print(stamped, flush=True)
                self.file.write(stamped + "\n")

    def close(self):
        self.file.close()


def child_env():
    """The steps run this checkout's package, unbuffered so that their lines reach the log as they come."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def supervise(commands, ctx):
    """Run `commands` ({name: argv}) side by side, each in a process group of its own, their output into the log.
    At the deadline (the step's cap, ctx.until, or grace + reserve seconds before the budget's end) each group
    gets a SIGINT, as from Ctrl-C, and a SIGKILL `grace` seconds later. Returns ({name: exit code},
    {name: output lines}, whether the deadline stopped them)."""
    plan, lines, procs = ctx.plan, {name: [] for name in commands}, {}
    deadline = min(plan.budget - plan.reserve - plan.grace, ctx.until)  # in the budget's seconds since its start
    for name, argv in commands.items():
        ctx.log(f"$ python {shlex.join(argv[1:])}", name)
        procs[name] = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",  # a stray byte must not stop the reader, or the step blocks on a full pipe
            env=child_env(),
            start_new_session=True,  # its own process group: the SIGINT reaches its children too, as Ctrl-C would
        )
    readers = [threading.Thread(target=_pump, args=(procs[n].stdout, n, lines[n], ctx.log), daemon=True) for n in procs]
    for t in readers:
        t.start()
    stopped = False
    try:
        while any(p.poll() is None for p in procs.values()):
            if not stopped and ctx.budget.elapsed() >= deadline:
                ctx.log(f"deadline: {ctx.budget.left():.0f} s left of the budget; SIGINT to {', '.join(procs)}")
                stopped = True
                _stop(procs, plan.grace, ctx.log)
            time.sleep(0.2)
    except KeyboardInterrupt:  # this process was asked to stop: its steps stop as at a deadline
        _stop(procs, plan.grace, ctx.log)
        raise
    finally:
        for t in readers:
            t.join(timeout=5)
    return {n: p.returncode for n, p in procs.items()}, lines, stopped


def _pump(stream, name, lines, log):
    for line in stream:
        lines.append(line.rstrip("\n"))
        log(lines[-1], name)


def _stop(procs, grace, log):
    """SIGINT to each live process group, then SIGKILL to any still alive after `grace` seconds."""
    _signal(procs, signal.SIGINT)
    end = time.monotonic() + grace
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < end:
        time.sleep(0.2)
    if any(p.poll() is None for p in procs.values()):
        log(f"still running {grace:.0f} s after the SIGINT: SIGKILL")
        _signal(procs, signal.SIGKILL)
    for p in procs.values():
        p.wait()


def _signal(procs, signum):
    for p in procs.values():
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signum)


def outcome(codes, stopped):
    """A step's state for the table."""
    if stopped:
        return "stopped at the deadline"
    bad = {name: code for name, code in codes.items() if code}
    return "ok" if not bad else "failed (exit " + ", ".join(str(c) for c in sorted(set(bad.values()))) + ")"


@contextlib.contextmanager
def stop_as_interrupt():
    """A SIGTERM (a timeout's kill) raises KeyboardInterrupt as a SIGINT does, so the table is still written."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
