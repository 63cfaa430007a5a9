"""Planning an experiment's runs: each run resolved once, in the parent process, into a Job: the frozen spec
and everything its run directory and its process need. A Job is data: the process that trains it (this one,
a child started by `--jobs`, a torchrun rank, a Slurm job) receives it whole, as JSON or by broadcast, and never
re-reads the command line.

Seeds: `--seeds 0-4` makes one Job per run and seed. Seed 0 trains into <out>/<experiment>/<run>/, any other seed
into <run>-seed<N>/ beside it (run_dir_name), so that runs trained before seeds existed read as seed 0; the run's
name (config.json, the CSV's `run` column) stays <run>, and the seed is the spec's."""

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from resnet_repro.config import TrainSpec, spec_from_config
from resnet_repro.engine import rundir
from resnet_repro.models import parse_name


@dataclass(frozen=True)
class Job:
    spec: TrainSpec
    experiment: str  # results go to <out>/<experiment>/<run>/ (<run>-seed<N>/ for a seed N other than 0)
    run: str  # the run's name in the experiment: the same for every seed
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

    @property
    def name(self):
        """What tells this job from the others of its experiment: its run directory's name ("plain20-seed1")."""
        return Path(self.run_dir).name

    def to_json(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text):
        fields = json.loads(text)
        return cls(**{**fields, "spec": spec_from_config(fields["spec"])})


def plan_jobs(exp, out, devices, options, seeds=None):
    """One Job per run of the Experiment `exp` and seed, under out/<experiment>/: every run of the first seed in
    the experiment's order, then every run of the next (a sweep stopped half-way has whole seeds). seeds: None
    for the spec's own seed. Runs are spread over `devices` longest first (see cost), so that runs of one cost
    land on different devices. options: the Job fields every run shares (data_dir, resume, overwrite,
    deterministic, progress, workers, threads)."""
    exp_dir = Path(out) / exp.name
    specs = [
        (run, spec if seed is None else replace(spec, seed=seed))
        for seed in seeds or [None]
        for run, spec in exp.runs.items()
    ]
    jobs = [
        Job(spec, exp.name, run, str(exp_dir / run_dir_name(run, spec.seed)), quick=exp.quick, **options)
        for run, spec in specs
    ]
    by_cost = sorted(jobs, key=cost, reverse=True)
    device = {job.name: str(devices[i % len(devices)]) for i, job in enumerate(by_cost)}
    return [replace(job, device=device[job.name]) for job in jobs]


def run_dir_name(run, seed):
    """plain20 for seed 0 (every run trained before seeds existed), plain20-seed1 for seed 1."""
    return run if seed == 0 else f"{run}-seed{seed}"


def parse_seeds(text):
    """--seeds: "0,1,2", "0-4" or both ("0-2,7") as a list of distinct seeds in the order given; ValueError
    saying what is wrong."""
    seeds = []
    for item in (i.strip() for i in text.split(",")):
        first, _, last = item.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"--seeds {text}: {item or 'an empty item'} is not a seed or a range; e.g. 0,1,2 or 0-4")
        low, high = int(first), int(last or first)
        if low > high or high >= 2**63 or high - low >= 1000:
            raise ValueError(f"--seeds {text}: {item} is not a range of at most 1000 seeds from 0 to 2**63 - 1")
        seeds += [s for s in range(low, high + 1) if s not in seeds]
    return seeds


def cost(job):
    """What a run costs, roughly: iterations x depth."""
    return job.spec.iterations * parse_name(job.spec.model)[1]


def check_unfinished(jobs):
    """Unfinished runs are continued (--resume) or started again (--overwrite) only when asked; finished ones
    are skipped. RunDirError naming the unfinished runs otherwise."""
    if any(job.resume or job.overwrite for job in jobs):
        return
    exp_dir = Path(jobs[0].run_dir).parent
    unfinished = rundir.unfinished(exp_dir, [job.name for job in jobs])
    if unfinished:
        raise rundir.RunDirError(
            f"{exp_dir} already holds unfinished runs {', '.join(unfinished)}; pass --resume to continue them, "
            f"--overwrite to delete them and start again, or --out elsewhere."
        )


def default_jobs(devices, runs, world_size):
    """Runs at once without --jobs: 2 on a CPU of 2+ cores (measured there: two 1-thread runs train 7-25% more
    images/s than one 2-thread run, bench --processes 2, docs/speed.md), else 1."""
    cpu = all(d.type == "cpu" for d in devices)
    return 2 if cpu and world_size == 1 and runs > 1 and (os.cpu_count() or 1) >= 2 else 1


def default_workers(jobs_at_once):
    """DataLoader workers per run for the stream loader: the CPU cores shared by the runs at once, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // max(1, jobs_at_once)))
