"""`run EXPERIMENT --launcher slurm`: each run x seed of an experiment as one Slurm job, submitted as an array
through submitit (an optional dependency: `uv sync --extra slurm`), as pycls's sweeps and torchvision's
run_with_submitit.py do. `run` plans, checks and submits, prints the job ids and where their logs go, and returns;
the runs write their run directories as any other, for `run ... --resume` or `analysis` to read afterwards. It loads
each dataset once before submitting: a login node often has the network that compute nodes lack, and the cache it
fills is what the jobs read; and a run done already is not submitted (see done_already).

A job receives its plan.Job as JSON (data, as a child of --jobs does) and trains it through launch.train_job, the
local launcher's entry. When its time is nearly up (or it is preempted), Slurm signals it (USR2, 90 s before
the end); submitit then calls TrainTask.checkpoint, which resubmits the same Job, and requeues the job: its next
start resumes from the run's checkpoint.pt (written at every CSV row; the steps since the last row are done again,
to the same result, as after any kill). Every job trains with resume on: the parent has checked its run directory
(an unfinished run needs --resume; --overwrite is carried out here, before submitting), so what a job finds
unfinished there is its own earlier attempt, also when Slurm itself starts a preempted job again.
"""

import re
from dataclasses import replace
from pathlib import Path

from resnet_repro import data
from resnet_repro.config import SpecError
from resnet_repro.engine import distributed, provenance, rundir
from resnet_repro.launch import local as launch
from resnet_repro.launch import plan

INSTALL = "--launcher slurm needs submitit: uv sync --extra slurm (or pip install submitit)"
MAX_TIMEOUTS = 20  # requeues after a job's --time ran out: a run may take up to 21 slots of --time
DEFAULTS = {"partition": None, "account": None, "gpus_per_run": 1, "cpus_per_run": 10, "time": "4:00:00"}


def add_options(p):
    g = p.add_argument_group("launching", "where the runs train (--launcher slurm: one Slurm job per run and seed)")
    g.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: on this machine (default); slurm: submit each run x seed as a Slurm job and return",
    )
    g.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    g.add_argument("--account", help="Slurm account to charge (default: yours)")
    g.add_argument(
        "--gpus-per-run", type=int, help="GPUs of one run (default 1; 0: a CPU job; 2+: DDP, one process each)"
    )
    g.add_argument("--cpus-per-run", type=int, help="CPU cores of one run (default 10), shared by its processes")
    g.add_argument(
        "--time",
        help="time limit of one job, MINUTES or H:MM:SS (default 4:00:00); a run that needs "
        f"longer is requeued and resumes, up to {MAX_TIMEOUTS} times",
    )


def option_error(args):
    """Why the Slurm options of `args` cannot be used (None if they can)."""
    given = [f"--{k.replace('_', '-')}" for k in DEFAULTS if getattr(args, k) is not None]
    if args.launcher != "slurm":
        return f"{', '.join(given)} apply to --launcher slurm only" if given else None
    for flag, value in (("--device", args.device), ("--jobs", args.jobs)):
        if value is not None:
            return f"{flag} does not apply to --launcher slurm: each run is a job of --gpus-per-run GPUs"
    if options(args)["gpus_per_run"] < 0 or options(args)["cpus_per_run"] < 1:
        return "--gpus-per-run must be 0 or more, --cpus-per-run 1 or more"
    if not minutes(options(args)["time"]):  # None, or 0: a job that would end before it starts
        return f"--time {args.time}: give a time limit of a minute or more, as minutes (240) or H:MM:SS (4:00:00)"
    return None


def options(args):
    """The Slurm options of `args`, defaults filled in."""
    return {k: default if getattr(args, k) is None else getattr(args, k) for k, default in DEFAULTS.items()}


def minutes(text):
    """Minutes of a Slurm time: "90" or "1:30:00" -> 90; None if it is neither."""
    m = re.fullmatch(r"(\d+)(?::(\d\d):(\d\d))?", text.strip())
    if not m:
        return None
    hours_or_minutes, mins, secs = m.groups()
    return int(hours_or_minutes) if mins is None else int(hours_or_minutes) * 60 + int(mins) + (int(secs) > 0)


def parameters(opts, name):
    """submitit's parameters of one job: a process per GPU (one for a CPU job), the cores shared among them."""
    tasks = max(1, opts["gpus_per_run"])
    params = dict(
        name=name,
        timeout_min=minutes(opts["time"]),
        gpus_per_node=opts["gpus_per_run"] or None,
        tasks_per_node=tasks,
        cpus_per_task=max(1, opts["cpus_per_run"] // tasks),
        slurm_partition=opts["partition"],
        slurm_account=opts["account"],
    )
    return {k: v for k, v in params.items() if v is not None}


def job_options(args):
    """The Job fields of the runs of a Slurm submission: each a job of --cpus-per-run cores, shared by its
    --gpus-per-run processes (threads, and DataLoader workers unless --workers)."""
    threads = parameters(options(args), "")["cpus_per_task"]
    workers = args.workers if args.workers is not None else min(8, threads)
    return dict(
        data_dir=str(args.data_dir),
        resume=args.resume,
        overwrite=args.overwrite,
        deterministic=args.deterministic,
        progress=False,
        workers=workers,
        threads=threads,
    )


def make_executor(folder, cluster="slurm"):
    """submitit's executor for `cluster` ("local" runs the jobs on this machine, as the tests do)."""
    try:
        import submitit
    except ImportError:
        raise SpecError(INSTALL) from None
    try:
        return submitit.AutoExecutor(folder=folder, cluster=cluster, **{f"{cluster}_max_num_timeout": MAX_TIMEOUTS})
    except RuntimeError as e:  # no sbatch/srun here
        raise SpecError(f"--launcher slurm: no Slurm here ({e}); submit from a login node of the cluster") from None


def submit_all(jobs, datasets, opts, folder, executor=None):
    """`run --launcher slurm` once its jobs are planned and checked and their data loaded here ({data_key:
    Dataset}): submit those not done yet, say where they went and return 0, without waiting for them."""
    skipped = done_already(jobs, datasets)
    if skipped:
        print(f"done already, not submitted: {', '.join(sorted(skipped))}")
    todo = [job for job in jobs if job.name not in skipped]
    if todo:
        report(todo, submit(todo, opts, folder, executor))
    return 0


def done_already(jobs, datasets):
    """The names (job.name) of the jobs done with the same config. Checked here, before submitting, where a local
    launcher leaves it to each run's process: a Slurm job would only find out after its wait in the queue. A
    finished run started with another config is refused, RunDirError, as the job would refuse it."""
    done = set()
    for job in jobs:
        if rundir.done_already(job.run_dir, job.overwrite):
            rundir.check_config(job.run_dir, provenance.run_config(job, datasets[data.data_key(job.spec)]))
            done.add(job.name)
    return done


def submit(jobs, opts, folder, executor=None):
    """Submit `jobs` (plan.Job) as one array of Slurm jobs, logging to folder/<job id>_<task>_log.{out,err}; their
    submitit Jobs, in order. A job asked to overwrite has its run's files set aside here (kept until the submission
    is accepted, put back if it is refused), and then trains with resume on (see the module's docstring)."""
    executor = executor or make_executor(Path(folder) / "%j")
    executor.update_parameters(**parameters(opts, jobs[0].experiment))
    aside = [rundir.set_aside(job.run_dir) for job in jobs if job.overwrite]
    ready = [
        replace(
            job,
            resume=True,
            overwrite=False,
            progress=False,
            run_dir=str(Path(job.run_dir).absolute()),
            data_dir=str(Path(job.data_dir).absolute()),
        ).to_json()
        for job in jobs
    ]
    try:
        submitted = executor.map_array(TrainTask(), ready)
    except Exception as e:  # sbatch refused (a mistyped partition, an account without access): nothing was queued
        for moved in aside:
            rundir.put_back(moved)
        text = str(e).strip().splitlines()
        why = next((line.strip() for line in text if "error" in line.lower()), text[0] if text else type(e).__name__)
        raise SpecError(
            f"--launcher slurm: the submission was refused, nothing was submitted and no run changed: {why}"
        ) from None
    for moved in aside:
        rundir.drop(moved)
    return submitted


def report(jobs, submitted, say=print):
    """What was submitted: a line per run with its Slurm job id and log, then what to do next."""
    for job, sjob in zip(jobs, submitted):
        say(f"{job.name}: Slurm job {sjob.job_id}, log {sjob.paths.stdout}")
    exp_dir = Path(jobs[0].run_dir).parent
    say(
        f"{len(submitted)} jobs submitted; they write {exp_dir}/ as local runs do. When they end, the same command "
        f"plus --resume continues any that stopped, and `uv run python -m resnet_repro.analysis {exp_dir}` draws them"
    )


class TrainTask:
    """What a Slurm job runs: train the plan.Job given as JSON. A submitit Checkpointable (by its `checkpoint`
    method; defined without submitit's base class, so that this module imports without submitit)."""

    def __call__(self, job_json):
        from submitit import JobEnvironment

        job = plan.Job.from_json(job_json)
        if JobEnvironment().num_tasks > 1:
            job = replace(job, device=str(distributed_device()))  # one process per GPU, as under torchrun
        try:
            outcome = launch.train_job(job)
        finally:
            distributed.finish()
        if outcome.state == "failed":
            raise RuntimeError(f"{job.name}: FAILED: {outcome.message}")
        return f"{job.name}: {outcome.state}"

    def checkpoint(self, job_json):
        """Called by submitit when the job's time ends or it is preempted: the same Job again, resuming."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(TrainTask(), job_json)


def distributed_device():
    """This process's device in a job of several tasks: torchrun's environment from submitit's, then a group."""
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # distributed.init picks LOCAL_RANK's GPU
    return distributed.init()[2]
