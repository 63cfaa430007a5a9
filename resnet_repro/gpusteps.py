"""The steps of resnet_repro.gpucheck: the bench, the probe of runs at once, the runs; each returns its rows of
the table. Every step runs the project's own command lines (python -m resnet_repro.bench / run), its interface."""

import csv
import json
import re
import statistics
import sys
import time
from pathlib import Path

from resnet_repro.supervise import outcome, supervise

# bench prints this after each model's images/s (bench.bench_model)
CHECK_LINE = re.compile(
    r"^\s*(\S+) check after (\d+) iterations from one seed: test error usual ([\d.]+)%, engine ([\d.]+)% .*: (.+)$"
)


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
