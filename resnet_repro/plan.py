"""Planning an experiment's runs: each run resolved once, in the parent process, into a Job: the frozen spec
and everything its run directory and its process need. A Job is data: the process that trains it (this one,
a child started by `--jobs`, a torchrun rank) receives it whole, as JSON or by broadcast, and never re-reads
the command line."""

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from resnet_repro import rundir
from resnet_repro.config import TrainSpec, spec_from_config
from resnet_repro.models import parse_name


@dataclass(frozen=True)
class Job:
    spec: TrainSpec
    experiment: str  # results go to <out>/<experiment>/<run>/
    run: str
    run_dir: str
    quick: bool = False  # the experiment's [quick] recipe (recorded in config.json)
    data_dir: str = "data"  # where downloads and decoded caches live
    device: str = "cpu"
    resume: bool = False  # continue an unfinished run from its checkpoint
    overwrite: bool = False  # delete an existing run and train it again
    deterministic: bool = False
    progress: bool = True  # a progress bar on stderr
    workers: int = 0  # DataLoader workers (stream loader)
    threads: int = 0  # CPU threads of the process that trains it (0: torch's default)

    def to_json(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text):
        fields = json.loads(text)
        return cls(**{**fields, "spec": spec_from_config(fields["spec"])})


def plan_jobs(exp, out, devices, options):
    """One Job per run of the Experiment `exp`, in its order, under out/<experiment>/. Runs are spread over
    `devices` longest first (see cost), so that runs of one cost land on different devices. options: the Job
    fields every run shares (data_dir, resume, overwrite, deterministic, progress, workers, threads)."""
    exp_dir = Path(out) / exp.name
    jobs = [Job(spec, exp.name, run, str(exp_dir / run), quick=exp.quick, **options) for run, spec in exp.runs.items()]
    by_cost = sorted(jobs, key=cost, reverse=True)
    device = {job.run: str(devices[i % len(devices)]) for i, job in enumerate(by_cost)}
    return [replace(job, device=device[job.run]) for job in jobs]


def cost(job):
    """What a run costs, roughly: iterations x depth."""
    return job.spec.iterations * parse_name(job.spec.model)[1]


def check_unfinished(jobs):
    """Unfinished runs are continued (--resume) or started again (--overwrite) only when asked; finished ones
    are skipped. RunDirError naming the unfinished runs otherwise."""
    if any(job.resume or job.overwrite for job in jobs):
        return
    exp_dir = Path(jobs[0].run_dir).parent
    unfinished = rundir.unfinished(exp_dir, [job.run for job in jobs])
    if unfinished:
        raise rundir.RunDirError(
            f"{exp_dir} already holds unfinished runs {', '.join(unfinished)}; pass --resume to continue them, "
            f"--overwrite to delete them and start again, or --out elsewhere."
        )


def default_jobs(devices, runs, world_size):
    """Runs at once without --jobs: 2 on a CPU of 2+ cores (measured there: two 1-thread runs train 15-25% more
    images/s than one 2-thread run, see docs/speed.md), else 1."""
    cpu = all(d.type == "cpu" for d in devices)
    return 2 if cpu and world_size == 1 and runs > 1 and (os.cpu_count() or 1) >= 2 else 1


def default_workers(jobs_at_once):
    """DataLoader workers per run for the stream loader: the CPU cores shared by the runs at once, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // max(1, jobs_at_once)))
