"""python -m resnet_repro.gpucheck: one call on a GPU machine that measures the engine there and trains Fig. 1 at
1/8 of the paper's schedule, within a time budget (docs/gpu-check.md has the command and what to do next).

Steps, in this order; each is a subprocess of the project's own command lines, so that a crashed or hung one
costs its own time and no more:
  bench    python -m resnet_repro.bench: the usual loop vs the engine, ResNet-20 and ResNet-56 at batch 128, eager,
           then both trained from one seed (the check)
  probe    copies of one run of python -m resnet_repro.run side by side, 1 vs 4 processes on the one GPU: their
           training images/s in all picks how many of the Fig. 1 runs train at once (--jobs)
  runs     python -m resnet_repro.run degradation --iterations 8000 --jobs <picked>: Fig. 1's four runs
  compile  the bench again with torch.compile: last, since compiling on a cold cache may take minutes
Writes under --out: gpucheck.log (all that is printed, the steps' output too), bench/<device>-<date>.csv,
probe/probe.csv (and its runs), gpu-8k/degradation/<run>/ (metrics.csv, config.json, status.json, final.pt or
checkpoint.pt) and table.md, the table printed at the end.

The budget: a step starts only if the least it needs fits in the seconds left; a running step gets a SIGINT
to its process group when its own cap is reached or `grace` seconds before the reserve kept for the end (the
runs finish their step and write a checkpoint, as on Ctrl-C; --resume continues them), and a SIGKILL when the
grace is over. A SIGINT or SIGTERM to this process stops the running step the same way, skips the rest and
still writes the table.
--tiny: the same steps made small enough for a CPU (tests/test_gpucheck.py), so that this does not rot unseen.
"""

import argparse
import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from resnet_repro.gpusteps import step_bench, step_probe, step_runs
from resnet_repro.supervise import Budget, Log, stop_as_interrupt

STEPS = ("bench", "probe", "runs", "compile")
NAMED_DATA = ("cifar10", "cifar100", "mini")  # --data sources that are not paths


@dataclass(frozen=True)
class Plan:
    """What each step does. GPU: the device call's; TINY: the same steps made small enough for a CPU."""

    # fmt: off
    models: tuple = ("resnet20", "resnet56")  # bench
    batch: int = 128  # bench (the runs keep the experiment's, the paper's 128)
    iterations: int = 300  # bench: timed iterations per path
    warmup: int = 30  # bench: untimed iterations first (torch.compile compiles in these)
    check: int = 1000  # bench, eager: both paths train this long from one seed; the compiled bench skips it
    workers: int = 8  # bench: DataLoader workers of the usual loop (its default on 8+ cores)
    probe_model: str = "resnet20"  # a run of degradation, whatever the runs step trains
    probe_iterations: int = 400
    probe_every: int = 100  # a CSV row (and its images/s) every this many iterations; the first is a warm-up
    probe_jobs: tuple = (1, 4)  # processes side by side on the one device
    gain: float = 1.05  # more processes at once only if they train at least this much faster in all
    experiment: str = "degradation"  # the runs step's experiment and its runs ("": all)
    runs: str = ""
    run_iterations: int = 8000  # 1/8 of the paper's 64k, as results/cpu-8k
    run_set: tuple = ()  # --set overrides of the probe and the runs (tiny: a small batch)
    budget: float = 450.0  # seconds for the whole call, the table included
    reserve: float = 10.0  # seconds kept for the table at the end
    grace: float = 30.0  # seconds from the SIGINT at a deadline to the SIGKILL
    # step: (seconds it needs to be worth starting, the most it may take: None = up to the deadline); the runs
    # come before compile, which gets what is left, so that the runs keep the time the steps before them spare
    limits: dict = field(default_factory=lambda: {
        "bench": (60, 180), "probe": (30, 90), "runs": (90, None), "compile": (60, None)})
    compile: bool = True
    # fmt: on


GPU = Plan()
TINY = Plan(
    models=("resnet8",),
    batch=8,
    iterations=3,
    warmup=1,
    check=4,
    workers=0,
    probe_iterations=4,
    probe_every=2,
    probe_jobs=(1, 2),
    run_iterations=2,
    run_set=("batch_size=8",),
    budget=600.0,
    reserve=1.0,
    grace=20.0,
    limits={step: (1, None) for step in STEPS},
    compile=False,  # compiling on a CPU takes minutes and a C++ toolchain
)


@dataclass
class Context:
    """What the steps share: the plan, the options, the budget, the log, and the --jobs the probe picked."""

    plan: Plan
    args: argparse.Namespace
    budget: Budget
    log: Log
    jobs: int | None = None
    until: float = float("inf")  # the running step's cap, in the budget's seconds since its start


# --- the call -------------------------------------------------------------------------------------------


def run_step(step, ctx):
    """A step's table rows; skipped if the least it needs does not fit in the budget left."""
    plan, left = ctx.plan, ctx.budget.left() - ctx.plan.reserve
    if step == "compile" and not plan.compile:
        return [("compile", "-", "not in --tiny: compiling is for the GPU call", "skipped")]
    needs, cap = plan.limits[step]
    if left < needs:
        ctx.log(f"{step}: skipped, {max(left, 0):.0f} s left of the budget, it needs {needs} s")
        return [(step, "-", "not run", "skipped (budget)")]
    ctx.until = ctx.budget.elapsed() + cap if cap is not None else float("inf")
    ctx.log(f"--- {step} ({left:.0f} s left{f', at most {cap} s' if cap is not None else ''})")
    start = time.monotonic()
    steps = {"bench": step_bench, "probe": step_probe, "runs": step_runs}
    rows = steps[step](ctx) if step in steps else step_bench(ctx, compiled=True)
    ctx.log(f"{step}: {time.monotonic() - start:.0f} s")
    return rows


def table(rows):
    lines = ["| step | what | result | state |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows]) + "\n"


def describe_machine(log, device):
    """Logs the machine and the commit; returns `device`, by default cuda if there is one."""
    import torch

    from resnet_repro.provenance import git_commit

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    log(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}")
    log(f"{os.cpu_count()} CPU cores; {platform.platform()}; commit {git_commit()}")
    return device or ("cuda" if cuda else "cpu")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m resnet_repro.gpucheck",
        description="On a GPU machine, in one call: the bench of the usual loop vs the engine (eager, compiled), "
        "1 vs 4 runs at once, Fig. 1's four runs at 8,000 iterations, within --budget seconds. "
        "See docs/gpu-check.md.",
    )
    p.add_argument("--out", required=True, help="folder for everything it writes (on the device machine: $OUT)")
    p.add_argument("--data", help="default: .device/cifar10-jpeg.tar.gz (--tiny: mini, the bundled mini CIFAR-10)")
    p.add_argument("--data-dir", default="data", help="where the decoded data is cached (default: data)")
    p.add_argument("--device", help="default: cuda if available, else cpu (--tiny: cpu)")
    p.add_argument("--budget", type=float, help="seconds for the whole call (default: 450; --tiny: 600)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, in order (default: {','.join(STEPS)})")
    p.add_argument("--jobs", type=int, help="runs at once in the runs step (default: the probe's pick, else 1)")
    p.add_argument("--experiment", default="degradation", help="of the runs step (default: degradation, Fig. 1)")
    p.add_argument("--runs", default="", help="comma-separated subset of the experiment's runs (default: all)")
    p.add_argument("--iterations", type=int, help="of each run (default: 8000; --tiny: 2)")
    p.add_argument("--tiny", action="store_true", help="the same steps made small enough for a CPU, for the tests")
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if unknown := [s for s in args.steps if s not in STEPS]:
        p.error(f"unknown steps {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    return args


def resolve(args):
    """The plan and the options with their defaults filled in."""
    plan = TINY if args.tiny else GPU
    if args.budget is not None:
        plan = dataclasses.replace(plan, budget=args.budget)
    plan = dataclasses.replace(plan, experiment=args.experiment, runs=args.runs)
    if args.iterations is not None:
        plan = dataclasses.replace(plan, run_iterations=args.iterations)
    args.data = args.data or ("mini" if args.tiny else ".device/cifar10-jpeg.tar.gz")
    if args.tiny:
        args.device = args.device or "cpu"
    return plan


def main(argv=None, clock=time.monotonic):
    args = parse_args(argv)
    plan = resolve(args)
    if args.data not in NAMED_DATA and not Path(args.data).exists():
        print(
            f"error: no data at {args.data}. Before the device call: cp /work/shared/data/cifar10-jpeg.tar.gz .device/ "
            "and carry .device (docs/gpu-check.md)",
            file=sys.stderr,
        )
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    budget = Budget(plan.budget, clock)
    log = Log(Path(args.out) / "gpucheck.log", budget)
    ctx, rows, code = Context(plan, args, budget, log), [], 0
    with stop_as_interrupt():
        try:
            args.device = describe_machine(log, args.device)
            log(f"data {args.data}, device {args.device}, steps {', '.join(args.steps)}, out {args.out}")
            log(f"plan: {plan}")
            for step in args.steps:
                rows += run_step(step, ctx)
        except KeyboardInterrupt:
            log("interrupted: the running step was stopped, the rest skipped")
            rows.append(("-", "-", "interrupted", "stopped"))
            code = 130
    rows.append(("total", "-", f"{budget.elapsed():.0f} s of a {plan.budget:.0f} s budget", ""))
    (Path(args.out) / "table.md").write_text(table(rows))
    log("\n" + table(rows))
    log.close()
    return code or (1 if any(row[3].startswith("failed") for row in rows) else 0)


if __name__ == "__main__":
    sys.exit(main())
