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
import contextlib
import csv
import dataclasses
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("bench", "probe", "runs", "compile")
NAMED_DATA = ("cifar10", "cifar100", "mini")  # --data sources that are not paths
# bench prints this after each model's images/s (bench.bench_model)
CHECK_LINE = re.compile(
    r"^\s*(\S+) check after (\d+) iterations from one seed: test error usual ([\d.]+)%, engine ([\d.]+)% .*: (.+)$"
)


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


@dataclass
class Context:
    """What the steps share: the plan, the options, the budget, the log, and the --jobs the probe picked."""

    plan: Plan
    args: argparse.Namespace
    budget: Budget
    log: Log
    jobs: int | None = None
    until: float = float("inf")  # the running step's cap, in the budget's seconds since its start


# --- running a step ---------------------------------------------------------------------------------


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


# --- the steps ------------------------------------------------------------------------------------------


def bench_command(ctx, compiled):
    plan, args = ctx.plan, ctx.args
    cmd = [sys.executable, "-m", "resnet_repro.bench", "--models", ",".join(plan.models), "--batch", str(plan.batch)]
    cmd += ["--iterations", str(plan.iterations), "--warmup", str(plan.warmup)]
    cmd += ["--check-iterations", str(0 if compiled else plan.check), "--workers", str(plan.workers)]
    cmd += ["--device", args.device]
    cmd += ["--data", args.data, "--data-dir", args.data_dir, "--out", str(Path(args.out) / "bench")]
    return cmd + (["--compile"] if compiled else [])


def run_command(ctx, experiment, out, iterations, jobs, extra=()):
    """python -m resnet_repro.run: its command line is the interface, not its internals."""
    args, sets = ctx.args, [x for s in ctx.plan.run_set for x in ("--set", s)]
    cmd = [sys.executable, "-m", "resnet_repro.run", experiment, "--iterations", str(iterations)]
    cmd += ["--data", args.data, "--data-dir", args.data_dir, "--out", str(out), "--device", args.device]
    return cmd + ["--jobs", str(jobs), "--no-progress", "--no-figures", *sets, *extra]


def bench_csv_rows(folder):
    rows = []
    for path in sorted(Path(folder).glob("*.csv")):
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def step_bench(ctx, compiled=False):
    """The bench (eager, with the check; or compiled); its table rows."""
    step, folder = ("compile" if compiled else "bench"), Path(ctx.args.out) / "bench"
    before = len(bench_csv_rows(folder))
    codes, lines, stopped = supervise({step: bench_command(ctx, compiled)}, ctx)
    state, rows = outcome(codes, stopped), []
    measured = bench_csv_rows(folder)[before:]
    for r in measured:
        speedup = "" if r["path"] == "usual" else f" ({r['speedup']}x)"
        rows.append((step, f"{r['model']} {r['path']}", f"{float(r['images_per_second']):,.0f} img/s{speedup}", state))
    for m in filter(None, map(CHECK_LINE.match, lines[step])):
        model, n, usual_err, engine_err, verdict = m.groups()
        result = f"test err usual {usual_err}%, engine {engine_err}%: {verdict}"
        rows.append((step, f"{model} check, {n} it", result, state))
    done = {r["model"] for r in measured}
    return rows + [(step, model, "not measured", state) for model in ctx.plan.models if model not in done]


def steady_rate(metrics_csv):
    """A run's training images/s: the median of its rows' but the first (cudnn's autotuning, allocations)."""
    if not Path(metrics_csv).exists():
        return None
    with open(metrics_csv, newline="") as f:
        rates = [float(r["images_per_second"]) for r in csv.DictReader(f)]
    return statistics.median(rates[1:] or rates) if rates else None


def choose_jobs(rates, gain):
    """The fewest processes at once within `gain` of the fastest: more only where they pay ({n: images/s in all})."""
    best = None
    for n in sorted(rates):
        if best is None or rates[n] > gain * rates[best]:
            best = n
    return best


def step_probe(ctx):
    """Copies of one run side by side, for each count in plan.probe_jobs; sets ctx.jobs; its table rows."""
    plan, folder = ctx.plan, Path(ctx.args.out) / "probe"
    extra = ["--runs", plan.probe_model, "--set", f"log_every={plan.probe_every}", "--overwrite"]
    rates, rows, records = {}, [], []
    for n in plan.probe_jobs:
        if ctx.budget.elapsed() >= ctx.until:
            rows.append(("probe", f"{plan.probe_model} x{n}", "not run", "skipped (the step's cap)"))
            continue
        out = {k: folder / f"x{n}" / f"copy{k}" for k in range(1, n + 1)}
        start = time.monotonic()
        commands = {
            f"probe x{n} #{k}": run_command(ctx, "degradation", o, plan.probe_iterations, 1, extra)
            for k, o in out.items()
        }
        codes, _, stopped = supervise(commands, ctx)
        wall = time.monotonic() - start
        each = [steady_rate(o / "degradation" / plan.probe_model / "metrics.csv") for o in out.values()]
        state = outcome(codes, stopped)
        if None in each or state != "ok":
            rows.append(("probe", f"{plan.probe_model} x{n}", "no rate", state))
            continue
        rates[n] = sum(each)
        records.append({"processes": n, "images_per_second": round(rates[n], 1), "wall_seconds": round(wall, 1)})
        rows.append(("probe", f"{plan.probe_model} x{n}", f"{rates[n]:,.0f} img/s in all ({wall:.0f} s wall)", state))
    ctx.jobs = choose_jobs(rates, plan.gain)
    if records:
        write_csv(folder / "probe.csv", [{**r, "chosen": r["processes"] == ctx.jobs} for r in records])
    return rows + [("probe", "runs at once", str(ctx.jobs) if ctx.jobs else "none measured", "")]


def run_folder(iterations):
    """gpu-8k for 8,000 iterations (beside results/cpu-8k), gpu-<N> for other lengths."""
    return f"gpu-{iterations // 1000}k" if iterations % 1000 == 0 else f"gpu-{iterations}"


def step_runs(ctx):
    """The experiment's runs at plan.run_iterations, ctx.jobs at once; their table rows."""
    plan = ctx.plan
    jobs = ctx.args.jobs or ctx.jobs or 1  # the CLI's own default on a GPU is 1
    why = "--jobs" if ctx.args.jobs else "the probe's pick" if ctx.jobs else "the default, no probe"
    out, start = Path(ctx.args.out) / run_folder(plan.run_iterations), time.monotonic()
    # --resume: a call given the partial runs of an earlier one continues them
    extra = ["--resume", *(["--runs", plan.runs] if plan.runs else [])]
    codes, _, stopped = supervise(
        {"runs": run_command(ctx, plan.experiment, out, plan.run_iterations, jobs, extra)}, ctx
    )
    state = outcome(codes, stopped)
    rows = [("runs", "at once", f"{jobs} ({why}); {time.monotonic() - start:.0f} s wall for all", state)]
    rows += [("runs", run_dir.name, describe_run(run_dir), state) for run_dir in run_dirs(out / plan.experiment)]
    return rows if len(rows) > 1 else rows + [("runs", plan.experiment, "no run started", state)]


def run_dirs(exp_dir):
    return sorted(p for p in Path(exp_dir).glob("*") if (p / "config.json").exists())


def describe_run(run_dir):
    """One run's line: iterations done of planned, its last row's errors, minutes (rows' times), its state."""
    config = json.loads((run_dir / "config.json").read_text())
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
    rows = []
    if (run_dir / "metrics.csv").exists():
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    state = status.get("state", "unknown")
    state = "killed while running" if state == "running" else state  # its process is gone: it wrote no status
    if not rows:
        return f"0/{config['iterations']:,} it, no row yet, {state}"
    last, minutes = rows[-1], sum(float(r["epoch_seconds"]) for r in rows) / 60
    return (
        f"{int(last['iteration']):,}/{config['iterations']:,} it, train err {float(last['train_err']):.2f}%, "
        f"test err {float(last['test_err']):.2f}%, {minutes:.1f} min, {state}"
    )


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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
