"""Launching jobs (plan.Job): one after another in this process (so does each torchrun rank), or each in a child
process of its own (`--jobs N`, several devices); resnet_repro.launch.slurm submits each as a Slurm job. A child and a
Slurm job train their Job through the same entry, `train_job`. Each process loads the data of its runs once (the
parent of children loads none), and whether a run is done already is decided by the process that would train it
(rundir.claim), a child's parent learning it from the child's exit status.

A child is `python -m resnet_repro.launch.local`: it reads its Job as JSON from stdin and keeps the pipe open. When
the parent dies (even by SIGKILL) the pipe closes, and the child checkpoints and stops as on SIGTERM. Through the
same pipe the parent hands on the CPU threads of a run that ended once no run is left to start ("threads N": the
child trains on N from its next row); the last run to start takes its share of them from its first step. The parent
forwards SIGINT/SIGTERM to its children, starts no further run once one came (or once a child was interrupted),
waits for their checkpoints and exits 128 + the signal's number (130, 143).
"""

import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from resnet_repro import data, files
from resnet_repro.config import SpecError
from resnet_repro.engine import devices, metrics, recipe, rundir, stopping, train
from resnet_repro.engine.distributed import world
from resnet_repro.engine.rundir import Interrupted, RunDirError
from resnet_repro.launch import plan

# a child's exit status, what its parent learns of how the run went (beside its status.json): 128 + a signal's
# number when interrupted
TRAINED, FAILED, REFUSED, SKIPPED, NO_DATA = 0, 1, 2, 3, 4  # REFUSED: RunDirError or SpecError; NO_DATA: DataError


def setup_process(job):
    """Process-wide settings, once, where a process starts training: its CPU threads and torch's global flags."""
    if job.threads:
        torch.set_num_threads(job.threads)
    recipe.configure_torch(job.device, job.deterministic)


def in_this_process(jobs, datasets, say=print):
    """Train the jobs one after another here (under torchrun each rank trains its shard of every job), on the
    datasets loaded for them ({data.data_key: Dataset}). Returns ({job.name: train.Outcome}, the signal that
    stopped them or None); a signal that comes while a run is finishing lets it finish and starts no further run.
    Under torchrun a run that failed starts no further one either: the job ends on every process."""
    outcomes = {}
    with stopping.stop_requests() as stop:  # one for all the runs: a signal between two runs starts no further one
        for i, job in enumerate(jobs):
            if stop["signal"]:
                return outcomes, stop["signal"]
            try:
                outcomes[job.name] = outcome = train.train(job, datasets[data.data_key(job.spec)])
            except Interrupted as e:
                say(f"{job.name}: {e}", file=sys.stderr)  # says how to resume
                return outcomes, e.signal
            if outcome.state == "failed":
                rank, processes = world()
                if rank == 0 or outcome.message != train.PEER_LOST:  # under torchrun each process says its own
                    print(f"{job.name}: FAILED{f' (process {rank})' * bool(rank)}: {outcome.message}", file=sys.stderr)
                if processes > 1:  # the others may be inside this run's collectives: end the whole job
                    return outcomes, None
            if outcome.stop_signal and i < len(jobs) - 1 and world()[1] == 1:  # torchrun: ranks must agree
                say(
                    f"{outcome.stop_signal}: {job.name} finished, the next runs were not started; continue with "
                    "the same command plus --resume",
                    file=sys.stderr,
                )
                return outcomes, outcome.stop_signal
    return outcomes, None


def load_datasets(jobs, device, say):
    """{data_key: Dataset} for the jobs, each dataset loaded once."""
    datasets = {}
    for job in jobs:
        key = data.data_key(job.spec)
        if key not in datasets:
            datasets[key] = load_data(job, device, say)
    return datasets


def load_data(job, device, say=print):
    """The job's Dataset on `device`, said in one line ("data: ..."). Processes loading into one data_dir (the
    children of --jobs, torchrun's ranks) take turns: the first downloads or fills the cache, the next read it."""
    t = time.perf_counter()
    with _turns(job.data_dir):
        ds = data.load_for(job.spec, job.data_dir, device, job.workers)
    say(
        f"data: {ds.name}, {len(ds.train):,} train / {len(ds.test):,} test images, {ds.num_classes} classes "
        f"({time.perf_counter() - t:.1f}s)"
    )
    return ds


@contextlib.contextmanager
def _turns(data_dir):
    """Hold data_dir's lock file while the block runs (no lock where data_dir cannot be written)."""
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        lock = open(Path(data_dir) / ".loading.lock", "a+")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def in_children(jobs, at_once, progress=True):
    """Train each job in a child process, up to `at_once` at a time, the costliest first, and before them those
    done already (each child checks its own in a moment: a run done with another config is refused before any
    run trains); one progress bar over all of them, read from their CSVs; each child logs to
    <run dir>/output.log. Returns ({job.name: train.Outcome} of the children that ended, the signal that stopped
    them or None). A child that could not load its data or whose run directory refused it starts no further
    child: once the others end, data.DataError or RunDirError with the child's own message."""
    checks = {job.name for job in jobs if rundir.done_already(job.run_dir, job.overwrite)}
    pending = sorted(jobs, key=lambda job: (job.name not in checks, -plan.cost(job)))
    running, outcomes, errors = {}, {}, []
    threads = {job.name: 0 if job.deterministic else job.threads for job in jobs}  # what each child trains on now
    cores = min(os.cpu_count() or 1, at_once * max(job.threads for job in jobs))  # the CPU threads they share
    bar = progress_bar(jobs, at_once, progress)
    with bar, forwarding_signals(running) as stop:
        while running or (pending and not stop["signal"] and not errors):
            while pending and len(running) < at_once and not stop["signal"] and not errors:
                if pending[0].name not in checks and checks & running.keys():
                    break  # the runs done already are all checked before any other starts
                job = pending.pop(0)
                if not pending and job.name not in checks and threads[job.name]:  # the last to start: its share
                    threads[job.name] = max(job.threads, cores // (len(running) + 1))  # of the threads from the start
                    job = dataclasses.replace(job, threads=threads[job.name])
                running[job.name] = start_child(job)
            for name, (proc, job) in list(running.items()):
                if proc.poll() is None:
                    continue
                with contextlib.suppress(OSError):  # a message it did not live to read may still be buffered
                    proc.stdin.close()
                del running[name]
                code, status = proc.returncode, rundir.read_status(job.run_dir, absent="not started")
                if code in (130, 143):  # interrupted, from here or from outside: start nothing new
                    stop["signal"] = stop["signal"] or signal.Signals(code - 128).name
                    said = status["state"]
                elif code in (REFUSED, NO_DATA):
                    errors.append((code, job))
                    said = "refused" if code == REFUSED else "could not load its data"
                else:
                    state = {TRAINED: "done", SKIPPED: "skipped"}.get(code, "failed")
                    outcomes[name] = train.Outcome(state, status["message"])
                    said = state
                bar.write(f"{name}: {said} (exit {code}, log: {Path(job.run_dir) / 'output.log'})")
            if not stop["signal"] and (not pending or errors):  # nothing more starts: those running share the threads
                share_threads(running, threads, cores)  # of runs that ended, done already ones included
            show_progress(bar, jobs, running)
            time.sleep(0.2)
    order = [job.name for job in jobs]
    for code, job in sorted(errors, key=lambda error: (error[0] != NO_DATA, order.index(error[1].name))):
        raise (data.DataError if code == NO_DATA else RunDirError)(child_error(job))
    return outcomes, stop["signal"]


def progress_bar(jobs, at_once, progress=True):
    """One bar over the iterations of all `jobs`, read from their CSVs, starting where they stand (resumed runs
    and runs done already), so that its rate and time left count the steps trained from here on. The rate is the
    mean since the start: the CSVs grow by an epoch's row at a time, too seldom for a moving average."""
    from tqdm import tqdm

    return tqdm(
        total=sum(job.spec.iterations for job in jobs),
        initial=sum(metrics.last_iteration(job.run_dir) for job in jobs if not job.overwrite),
        desc=f"{len(jobs)} runs, {at_once} at once",
        unit="it",
        smoothing=0,
        miniters=1,  # drawn when the runs' rows move it, not at every look at their CSVs (a log stays short)
        disable=not progress,
        dynamic_ncols=True,
    )


def show_progress(bar, jobs, running):
    """The bar at the sum of the runs' last CSV rows, naming where each of those training stands."""
    at = {job.name: metrics.last_iteration(job.run_dir) for job in jobs}
    n, postfix = sum(at.values()), ", ".join(f"{name} {at[name]:,}" for name in running)
    if postfix != getattr(bar, "postfix", None):
        bar.set_postfix_str(postfix, refresh=n == bar.n)  # else update() draws it
    bar.update(n - bar.n)


def share_threads(running, threads, cores):
    """Give the children in `running` ({run: (Popen, job)}) an equal share of `cores` CPU threads where that is more
    than they train on now (`threads`, {run: threads}, updated; 0: keep its own, as --deterministic does, whose
    runs must be bitwise repeatable): a message on each one's stdin."""
    if not running or not cores:
        return
    share = cores // len(running)
    for name, (proc, _) in running.items():
        if threads[name] and share > threads[name]:  # threads are set for CPU runs only
            with contextlib.suppress(OSError):  # the child has just ended: nothing to give
                proc.stdin.write(f"threads {share}\n")
                proc.stdin.flush()
            threads[name] = share


def child_error(job):
    """The error line a child ended with in its output.log, without its "error: "."""
    log = Path(job.run_dir) / "output.log"
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
    said = next((line for line in reversed(lines) if line.startswith("error: ")), None)
    return said.removeprefix("error: ") if said else f"run {job.name} could not start; see {log}"


def start_child(job):
    try:
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(job.run_dir) / "output.log", "a", encoding="utf-8")
    except OSError as e:  # a read-only or otherwise unusable --out
        raise RunDirError(f"cannot write to {job.run_dir}: {e.strerror}; pass --out elsewhere") from None
    with log:  # the child holds its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "resnet_repro.launch.local"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    proc.stdin.write(job.to_json() + "\n")
    proc.stdin.flush()  # and the pipe stays open: its end tells the child that the parent is gone
    return proc, job


@contextlib.contextmanager
def forwarding_signals(running):
    """While the block runs, SIGINT and SIGTERM are passed on to the children in `running` ({run: (Popen, job)});
    the first one is recorded in the yielded {"signal": name}, as is one that came before (while the runs were
    planned): then no child starts. The children run in sessions of their own, so a terminal's Ctrl-C reaches them
    once, through here."""
    stop = {"signal": stopping.requested()}

    def forward(signum, frame):
        stop["signal"] = stop["signal"] or signal.Signals(signum).name
        for proc, _ in list(running.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    with stopping.handling(forward):
        yield stop


def _listen_to_the_parent():
    """The child's stdin after its Job: "threads N" lines (devices.ask_threads), then EOF when the parent closes the
    pipe or dies: then the child stops as on SIGTERM."""
    for line in sys.stdin:
        match line.split():
            case ["threads", n] if n.isdigit() and int(n) > 0:
                devices.ask_threads(int(n))
    os.kill(os.getpid(), signal.SIGTERM)


def train_job(job):
    """Train one Job in a process of its own (a child of --jobs, a Slurm job): the process's settings, the data,
    train.train. Its Outcome; raises as train.train does, Interrupted when a signal came while the data loaded
    (the run is not started), and data.DataError."""
    setup_process(job)
    dataset = load_data(job, job.device)
    if stopped := stopping.requested():
        raise Interrupted(f"{stopped} while its data loaded; the run was not started", stopped)
    return train.train(job, dataset)


def child_main():
    """python -m resnet_repro.launch.local: train the Job on stdin's first line, as in_children starts it. Its exit
    status: TRAINED, SKIPPED (done already), FAILED, REFUSED (a run directory that cannot be used), NO_DATA, or
    128 + the signal that interrupted it."""
    job = plan.Job.from_json(sys.stdin.readline())
    threading.Thread(target=_listen_to_the_parent, daemon=True).start()
    try:
        outcome = train_job(job)
    except Interrupted as e:
        print(f"{job.name}: {e}", file=sys.stderr)
        return stopping.exit_code(e.signal)
    except (RunDirError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return REFUSED
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return NO_DATA
    except KeyboardInterrupt:
        return 130
    if outcome.state == "failed":
        print(f"{job.name}: FAILED: {outcome.message}", file=sys.stderr)
    return {"done": TRAINED, "skipped": SKIPPED}.get(outcome.state, FAILED)


if __name__ == "__main__":
    files.utf8_console()
    sys.exit(stopping.stop_requests_until_exit(child_main))
