"""python -m resnet_repro.run EXPERIMENT: train every run of an experiment, then summarise and draw."""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from resnet_repro import config as cfg
from resnet_repro import data as datamod
from resnet_repro import distributed, provenance, rundir
from resnet_repro import train as trainer
from resnet_repro.models import parse_name

EPILOG = """\
examples:
  uv run python -m resnet_repro.run degradation --quick
      the demo: plain/ResNet-20/56 on the bundled mini CIFAR-10, a short schedule, CPU is fine
  uv run python -m resnet_repro.run degradation
      the paper's Fig. 1 runs (64k iterations each) on CIFAR-10, downloaded into ./data
  uv run python -m resnet_repro.run degradation --data path/to/cifar10-jpeg.tar.gz
      the same from an ImageFolder .tar.gz (results say "CIFAR-10 (JPEG q75 copy)")
  uv run python -m resnet_repro.run degradation --runs plain20,resnet20 --seed 1 --out results/seed1
  uv run python -m resnet_repro.run degradation --resume          continue killed or stopped runs
  uv run python -m resnet_repro.run degradation --set lr=0.05 --set batch_size=256 --overwrite
  uv run python -m resnet_repro.run --list

Each run writes results/<experiment>/<run>/ (metrics.csv, config.json, status.json, checkpoint.pt,
final.pt); figures go to figures/, or OUT/figures/ with --out OUT (quick runs into its quick/, runs shorter than
the paper's schedule into its <N>-iterations/). A finished run is skipped, an unfinished one needs --resume, and
nothing is overwritten unless --overwrite is given.
"""


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m resnet_repro.run",
        description="Train the paired plain and residual networks of an experiment (experiments/*.toml), "
        "log one CSV row per epoch (or per log_every iterations) per run, print a summary and redraw the paper's figures.",
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
        help="cuda, cuda:1, cpu, ... or a comma-separated list to spread runs over (default: cuda if available, else cpu)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="train up to this many runs at once, each in its own process with CPU cores / jobs "
        "threads (default: 2 on a CPU with 2+ cores, where two 1-thread runs train 15-25%% more images/s than one "
        "2-thread run; 1 on a GPU); small CIFAR nets leave a GPU mostly idle, so several at once may finish sooner",
    )
    p.add_argument("--seed", type=int, help="seed for init, data order and augmentation (default: the spec's, 0)")
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
    return p


def parse_args(argv):
    p = build_parser()
    args = p.parse_args(argv)
    if not args.list and not args.experiment:
        p.error("name an experiment (see --list), e.g. python -m resnet_repro.run degradation --quick")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    if args.jobs is not None and args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.runs is not None and not [r for r in args.runs.split(",") if r.strip()]:
        p.error("--runs names no run; give a comma-separated list such as plain20,resnet20 (or leave it out for all)")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        p.error(f"--seed must be between 0 and 2**63 - 1, not {args.seed}")
    for flag in ("out", "data_dir", "figures"):
        path = getattr(args, flag)
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            p.error(f"--{flag.replace('_', '-')} {path} is a file; it must be a directory (or not exist yet)")
    if args.device is not None:
        error = device_error(args.device)
        if error:
            p.error(error)
    return args


def device_error(text):
    """Why --device TEXT cannot be used (None if it can): an unknown name, an empty list item, an absent GPU."""
    for name in (d.strip() for d in text.split(",")):
        try:
            device = torch.device(name) if name else None
        except (RuntimeError, ValueError):
            device = None
        if device is None or device.type not in ("cpu", "cuda", "mps"):
            return f"--device {text}: {name or 'an empty item'} is not a device; use cpu, cuda, cuda:1, ... or a comma-separated list of them"
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            return f"--device {name}: no such CUDA GPU here ({torch.cuda.device_count()} visible); use --device cpu"
        if device.type == "mps" and not torch.backends.mps.is_available():
            return f"--device {name}: Apple's MPS is not available here; use --device cpu"
    return None


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
    (resnet_repro.finetune builds its experiment from its own options)."""
    args = parse_args(argv)
    try:
        return _main(args, make_experiment or experiment_from)
    except (cfg.SpecError, rundir.RunDirError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (datamod.DataError, rundir.DiskFull) as e:
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


def _main(args, make_experiment):
    if args.list:
        list_experiments()
        return 0
    rank, world_size, dist_device = distributed.init()
    try:
        return _run(args, make_experiment(args), rank, world_size, dist_device)
    finally:
        distributed.finish()


def _run(args, exp, rank, world_size, dist_device):
    say = print if rank == 0 else (lambda *a, **k: None)  # under torchrun only rank 0 talks
    devices = [
        torch.device(d.strip()) for d in (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).split(",")
    ]
    if args.jobs is None:
        args.jobs = default_jobs(devices, len(exp.runs), world_size)
    if world_size > 1:
        if args.jobs > 1 or len(devices) > 1:
            raise cfg.SpecError(
                "under torchrun each process trains a shard of every run: --jobs and several --device don't apply"
            )
        devices = [dist_device]
    device = devices[0]
    exp_dir = Path(args.out) / exp.name
    if not (args.resume or args.overwrite):
        unfinished = rundir.unfinished(exp_dir, exp.runs)  # finished runs are skipped
        if unfinished:
            raise rundir.RunDirError(
                f"{exp_dir} already holds unfinished runs {', '.join(unfinished)}; pass --resume to continue them, "
                f"--overwrite to start them again, or --out elsewhere."
            )

    first = next(iter(exp.runs.values()))
    say(
        f"{exp.name}: {len(exp.runs)} runs ({', '.join(exp.runs)}), {first.iterations:,} iterations of batch {first.batch_size}, "
        f"on {', '.join(map(provenance.device_name, devices))}{f' x {world_size} processes' if world_size > 1 else ''} -> {exp_dir}/"
    )
    if device.type == "cpu" and first.iterations > 5000:
        say(
            f"note: no GPU; {first.iterations:,} iterations per run take many hours on a CPU (--quick runs the demo in minutes)"
        )
    parallel = (args.jobs > 1 or len(devices) > 1) and len(exp.runs) > 1
    # in parallel mode this checks the data once and fills the cache the runs read
    datasets = load_datasets(exp, args, "cpu" if parallel else device, say)
    if parallel:
        skipped = skip_done(args, exp, exp_dir, datasets)
        trained = run_parallel(args, exp, exp_dir, devices, [run for run in exp.runs if run not in skipped])
        if trained is None:
            return 130
        results = skipped | trained
        return finish(args, exp, exp_dir, [results[run] for run in exp.runs if run in results])
    results = run_serial(args, exp, exp_dir, datasets, device, rank, world_size)
    if results is None:
        return 130
    if rank:
        return 1 if any(r.state == "failed" for r in results) else 0
    return finish(args, exp, exp_dir, results)


def load_datasets(exp, args, device, say):
    """{data_key: Dataset} for the experiment's runs, each loaded once."""
    datasets = {}
    for spec in exp.runs.values():
        key = data_key(spec)
        if key not in datasets:
            t = time.perf_counter()
            datasets[key] = ds = datamod.load_for(spec, args.data_dir, device, workers(args))
            say(
                f"data: {ds.name}, {len(ds.train):,} train / {len(ds.test):,} test images, {ds.num_classes} classes "
                f"({time.perf_counter() - t:.1f}s)"
            )
    return datasets


def run_serial(args, exp, exp_dir, datasets, device, rank, world_size):
    """Train the runs one after another in this process (under torchrun: each process a shard of every run).
    Returns the RunResults, or None if interrupted (a checkpoint is written; --resume continues)."""
    results = []
    options = dict(quick=exp.quick, data_dir=args.data_dir, resume=args.resume, overwrite=args.overwrite)
    options |= dict(progress=not args.no_progress, deterministic=args.deterministic, device=device)
    for run, spec in exp.runs.items():
        try:
            result = trainer.train(
                spec, datasets[data_key(spec)], exp_dir / run, experiment=exp.name, run=run, **options
            )
        except trainer.Interrupted as e:
            if rank == 0:
                print(f"{run}: {e}", file=sys.stderr)  # says how to resume
            return None
        if result.state == "failed" and rank == 0:
            print(f"{run}: FAILED: {result.message}", file=sys.stderr)
        results.append(result)
        if result.stop_signal and world_size == 1 and run != list(exp.runs)[-1]:  # torchrun: ranks must agree, not done
            if rank == 0:
                print(
                    f"{result.stop_signal}: {run} finished, the next runs were not started; continue with the same "
                    "command plus --resume",
                    file=sys.stderr,
                )
            return None
    return results


def skip_done(args, exp, exp_dir, datasets):
    """{run: its RunResult} for the runs done already, checked here against their config (a changed one is
    refused, as in a run's own process) so that no process starts just to find them done."""
    skipped = {}
    for run, spec in exp.runs.items():
        if not args.overwrite and rundir.read_status(exp_dir / run)["state"] == "done":
            dataset = datasets[data_key(spec)]
            skipped[run] = trainer.train(
                spec, dataset, exp_dir / run, experiment=exp.name, run=run, quick=exp.quick, data_dir=args.data_dir
            )
    return skipped


def data_key(spec):
    """What decides a run's dataset: runs that share it load it once (see datamod.load_for)."""
    return (
        spec.data,
        spec.loader,
        spec.val_size,
        spec.train_size,
        spec.image_size,
        spec.resize,
        spec.scale,
        spec.test_resize,
        spec.lighting,
    )


def default_jobs(devices, runs, world_size):
    """Runs at once without --jobs: 2 on a CPU of 2+ cores (measured there, see README "Speed"), else 1."""
    cpu = all(d.type == "cpu" for d in devices)
    return 2 if cpu and world_size == 1 and runs > 1 and (os.cpu_count() or 1) >= 2 else 1


def workers(args):
    """DataLoader workers per run for the stream loader: the CPU cores shared by the runs at once, at most 8."""
    if args.workers is not None:
        return args.workers
    return max(1, min(8, (os.cpu_count() or 2) // max(1, args.jobs)))


def finish(args, exp, exp_dir, results):
    from resnet_repro.tables import summary_table, to_markdown

    print()
    print(to_markdown(summary_table(results)), end="")
    for r in results:
        if r.message and r.state != "done":
            print(f"{r.run}: {r.state}: {r.message}")
    if not args.no_figures:
        draw_figures(exp_dir, figures_dir(args))  # quick runs land in <figures>/quick
    return 1 if any(r.state == "failed" for r in results) else 0


def figures_dir(args):
    """figures/ for results/; results elsewhere get theirs beside them, never over the committed figures/."""
    if args.figures:
        return Path(args.figures)
    return Path("figures") if Path(args.out) == Path("results") else Path(args.out) / "figures"


PARENT_ONLY = (
    "runs",
    "device",
    "jobs",
    "figures",
    "no_figures",
    "no_progress",
)  # the parent spreads runs, draws, shows progress


def child_command(args, run, device):
    """The command that trains one run of this invocation in a process of its own: the same options, but
    this run on this device, with no figures or progress bar."""
    cmd = [
        sys.executable,
        "-m",
        "resnet_repro.run",
        args.experiment,
        "--runs",
        run,
        "--device",
        str(device),
        "--no-figures",
        "--no-progress",
    ]
    for action in build_parser()._actions:
        value = getattr(args, action.dest, None)
        if (
            not action.option_strings
            or action.dest in PARENT_ONLY
            or value in (None, False, [])
            or value == action.default
        ):
            continue
        flag = action.option_strings[-1]
        cmd += (
            [flag]
            if value is True
            else [x for v in (value if isinstance(value, list) else [value]) for x in (flag, str(v))]
        )
    return cmd


def child_env(args, devices):
    """On a CPU the runs at once share its cores: each process gets cores / jobs threads (measured on 2 cores:
    two 1-thread processes train more images/s in all than one 2-thread process, and two 2-thread ones fewer)."""
    env = dict(os.environ)
    if all(d.type == "cpu" for d in devices):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    return env


def run_parallel(args, exp, exp_dir, devices, runs):
    """Train `runs` in up to args.jobs processes, spread over `devices`; one progress bar over all of the
    experiment's runs, read from their CSVs. Each process logs to <run dir>/output.log. Returns {run: RunResult}
    for `runs`, or None if interrupted."""
    from tqdm import tqdm

    # longest runs first, so the last one to start is a short one (cost ~ iterations x depth)
    pending = sorted(runs, key=lambda run: -exp.runs[run].iterations * parse_name(exp.runs[run].model)[1])
    device_of = {run: devices[i % len(devices)] for i, run in enumerate(pending)}
    running, codes = {}, {}
    total = sum(spec.iterations for spec in exp.runs.values())
    bar = tqdm(
        total=total, desc=f"{exp.name} ({args.jobs} at once)", unit="it", disable=args.no_progress, dynamic_ncols=True
    )
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                run = pending.pop(0)
                (exp_dir / run).mkdir(parents=True, exist_ok=True)
                log = open(exp_dir / run / "output.log", "a")
                running[run] = (
                    subprocess.Popen(
                        child_command(args, run, device_of[run]),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=child_env(args, devices),
                    ),
                    log,
                )
            for run, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    codes[run] = proc.returncode
                    log.close()
                    del running[run]
                    bar.write(
                        f"{run}: {rundir.read_status(exp_dir / run)['state']} (exit {proc.returncode}, log: {exp_dir / run / 'output.log'})"
                    )
            bar.update(sum(rundir.last_iteration(exp_dir / run) for run in exp.runs) - bar.n)
            time.sleep(1)
    except KeyboardInterrupt:  # Ctrl-C reached the runs too: they finish their step and write a checkpoint
        for proc, _ in running.values():
            proc.wait()
        print("interrupted; the runs wrote checkpoints: continue with the same command plus --resume", file=sys.stderr)
        return None
    finally:
        bar.close()
    usage = [run for run, code in codes.items() if code == 2]
    if usage:
        tail = (exp_dir / usage[0] / "output.log").read_text().strip().splitlines()[-1:]
        raise rundir.RunDirError(f"run {usage[0]} refused to start: {tail[0] if tail else 'see its output.log'}")
    return {run: rundir.result(exp_dir / run) for run in runs if (exp_dir / run / "config.json").exists()}


def draw_figures(exp_dir, out):
    from resnet_repro import analysis

    analysis.draw([exp_dir], out, fig7=False)  # prints what it drew and what it could not


if __name__ == "__main__":
    sys.exit(main())
