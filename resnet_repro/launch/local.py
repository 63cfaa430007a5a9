"""Launching jobs (plan.Job): one after another in this process (so does each torchrun rank), or each in a child
process of its own (`--jobs N`, several devices); resnet_repro.launch.slurm submits each as a Slurm job. A child and a
Slurm job train their Job through the same entry, `train_job`.

A child is `python -m resnet_repro.launch.local`: it reads its Job as JSON from stdin and keeps the pipe open. When
the parent dies (even by SIGKILL) the pipe closes, and the child checkpoints and stops as on SIGTERM. The parent
forwards SIGINT/SIGTERM to its children, starts no further run once one came (or once a child was
interrupted), waits for their checkpoints and exits 128 + the signal's number (130, 143).
"""

import contextlib
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
from resnet_repro.engine import metrics, provenance, recipe, rundir, stopping, train
from resnet_repro.engine.distributed import world
from resnet_repro.engine.rundir import Interrupted, RunDirError
from resnet_repro.launch import plan


def setup_process(job):
    """Process-wide settings, once, where a process starts training: its CPU threads and torch's global flags."""
    if job.threads:
        torch.set_num_threads(job.threads)
    recipe.configure_torch(job.device, job.deterministic)


def exit_code(signal_name):
    return 128 + signal.Signals[signal_name].value


def in_this_process(jobs, datasets, say=print):
    """Train the jobs one after another here (under torchrun each rank trains its shard of every job), on the
    datasets loaded for them ({data.data_key: Dataset}). Returns ({job.name: train.Outcome}, the signal that
    stopped them or None); a signal that comes while a run is finishing lets it finish and starts no further run."""
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
                say(f"{job.name}: FAILED: {outcome.message}", file=sys.stderr)
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
            t = time.perf_counter()
            datasets[key] = ds = data.load_for(job.spec, job.data_dir, device, job.workers)
            say(
                f"data: {ds.name}, {len(ds.train):,} train / {len(ds.test):,} test images, {ds.num_classes} classes "
                f"({time.perf_counter() - t:.1f}s)"
            )
    return datasets


def done_already(jobs, datasets):
    """The names (job.name) of the jobs that are done with the same config, checked without training or building anything (a
    finished run started with another config is refused, RunDirError, as the run's own process would)."""
    done = set()
    for job in jobs:
        if not job.overwrite and rundir.read_status(job.run_dir)["state"] == "done":
            rundir.check_config(job.run_dir, provenance.run_config(job, datasets[data.data_key(job.spec)]))
            done.add(job.name)
    return done


def in_children(jobs, at_once, progress=True):
    """Train each job in a child process, up to `at_once` at a time, the costliest first; one progress bar over
    all of them, read from their CSVs; each child logs to <run dir>/output.log. Returns ({job.name: exit code} of
    the children that ran, the signal that stopped them or None)."""
    from tqdm import tqdm

    pending, running, codes = sorted(jobs, key=plan.cost, reverse=True), {}, {}
    bar = tqdm(
        total=sum(job.spec.iterations for job in jobs),
        desc=f"{len(jobs)} runs, {at_once} at once",
        unit="it",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar, forwarding_signals(running) as stop:
        while running or (pending and not stop["signal"]):
            while pending and len(running) < at_once and not stop["signal"]:
                job = pending.pop(0)
                running[job.name] = start_child(job)
            for name, (proc, job) in list(running.items()):
                if proc.poll() is None:
                    continue
                proc.stdin.close()
                codes[name] = proc.returncode
                del running[name]
                if proc.returncode in (130, 143) and not stop["signal"]:  # interrupted from outside: start nothing new
                    stop["signal"] = signal.Signals(proc.returncode - 128).name
                bar.write(
                    f"{name}: {rundir.read_status(job.run_dir)['state']} (exit {proc.returncode}, log: {Path(job.run_dir) / 'output.log'})"
                )
            bar.update(sum(metrics.last_iteration(job.run_dir) for job in jobs) - bar.n)
            time.sleep(0.2)
    refused = [job for job in jobs if codes.get(job.name) == 2]
    if refused:
        tail = (Path(refused[0].run_dir) / "output.log").read_text().strip().splitlines()[-1:]
        raise RunDirError(f"run {refused[0].name} refused to start: {tail[0] if tail else 'see its output.log'}")
    return codes, stop["signal"]


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
    the first one is recorded in the yielded {"signal": name}, as is one that came before (while the data loaded):
    then no child starts. The children run in sessions of their own, so a terminal's Ctrl-C reaches them once,
    through here."""
    stop = {"signal": stopping.requested()}

    def forward(signum, frame):
        stop["signal"] = stop["signal"] or signal.Signals(signum).name
        for proc, _ in list(running.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_when_the_parent_dies():
    sys.stdin.read()  # returns at EOF: the parent closed the pipe, or died
    os.kill(os.getpid(), signal.SIGTERM)


def train_job(job):
    """Train one Job in a process of its own (a child of --jobs, a Slurm job): the process's settings, the data,
    train.train. Its Outcome; raises as train.train does, and data.DataError."""
    setup_process(job)
    return train.train(job, data.load_for(job.spec, job.data_dir, job.device, job.workers))


def child_main():
    """python -m resnet_repro.launch.local: train the Job on stdin's first line, as in_children starts it. Exit status:
    0 done or skipped, 1 failed, 2 refused (a run directory that cannot be used), 128 + signal if interrupted."""
    job = plan.Job.from_json(sys.stdin.readline())
    threading.Thread(target=_stop_when_the_parent_dies, daemon=True).start()
    try:
        outcome = train_job(job)
    except Interrupted as e:
        print(f"{job.name}: {e}", file=sys.stderr)
        return exit_code(e.signal)
    except (RunDirError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if outcome.state == "failed":
        print(f"{job.name}: FAILED: {outcome.message}", file=sys.stderr)
    return 1 if outcome.state == "failed" else 0


if __name__ == "__main__":
    files.utf8_console()
    sys.exit(stopping.stop_requests_until_exit(child_main))
