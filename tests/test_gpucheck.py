import csv
import dataclasses
import json
import signal
import sys
import time

import pytest

from conftest import write_image_folder
from resnet_repro import bench, gpucheck, gpusteps, run, supervise


def context(tmp_path, argv=()):
    args = gpucheck.parse_args(["--out", str(tmp_path / "out"), *argv])
    plan = gpucheck.resolve(args)
    args.device = args.device or "cpu"
    return gpucheck.Context(plan, args, supervise.Budget(plan.budget), log=None)


def test_the_device_call_commands_parse_with_the_real_command_lines(tmp_path):
    ctx = context(tmp_path)
    assert ctx.plan.budget < 480 and ctx.args.data == ".device/cifar10-jpeg.tar.gz"
    eager = bench.parse_args(gpusteps.bench_command(ctx, compiled=False)[3:])
    assert (eager.models, eager.batch, eager.iterations, eager.check_iterations, eager.compile) == (
        "resnet20,resnet56", 128, 300, 1000, False
    )  # fmt: skip
    compiled = bench.parse_args(gpusteps.bench_command(ctx, compiled=True)[3:])
    assert compiled.compile and compiled.check_iterations == 0 and compiled.out == str(tmp_path / "out" / "bench")
    out = tmp_path / "out" / gpusteps.run_folder(ctx.plan.run_iterations)
    runs = run.parse_args(gpusteps.run_command(ctx, "degradation", out, ctx.plan.run_iterations, 4, ["--resume"])[3:])
    assert (runs.experiment, runs.iterations, runs.jobs, runs.resume, runs.set) == ("degradation", 8000, 4, True, [])
    assert runs.out.endswith("gpu-8k") and runs.no_progress and runs.no_figures
    probe = run.parse_args(
        gpusteps.run_command(ctx, "degradation", out, 400, 1, ["--runs", "resnet20", "--overwrite"])[3:]
    )
    assert probe.runs == "resnet20" and probe.overwrite and ctx.plan.probe_jobs == (1, 4)
    assert [gpusteps.run_folder(n) for n in (8000, 64000, 60)] == ["gpu-8k", "gpu-64k", "gpu-60"]


def test_more_runs_at_once_only_where_they_pay():
    assert gpusteps.choose_jobs({1: 1000.0, 4: 3000.0}, gain=1.05) == 4
    assert gpusteps.choose_jobs({1: 1000.0, 4: 1040.0}, gain=1.05) == 1  # within the noise: the fewer
    assert gpusteps.choose_jobs({1: 1000.0, 2: 1500.0, 4: 1400.0}, gain=1.05) == 2
    assert gpusteps.choose_jobs({}, gain=1.05) is None


def test_a_run_speed_leaves_out_its_first_row(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("iteration,images_per_second\n100,10.0\n200,100.0\n300,90.0\n")
    assert gpusteps.steady_rate(path) == 95.0  # the median of 100 and 90, not of 10 too
    assert gpusteps.steady_rate(tmp_path / "absent.csv") is None


def test_a_budget_too_small_for_any_step_skips_them_and_still_writes_the_table(tmp_path, capsys):
    write_image_folder(tmp_path / "tiny", n_train=8, n_test=4)
    out = tmp_path / "out"
    assert gpucheck.main(["--tiny", "--budget", "0.5", "--data", str(tmp_path / "tiny"), "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    for step in ("bench", "probe", "runs"):
        assert f"| {step} | - | not run | skipped (budget) |" in table
    assert "| compile |" in table and "| total |" in table and "| total |" in capsys.readouterr().out
    assert "bench: skipped" in (out / "gpucheck.log").read_text()
    assert not (out / "bench").exists() and not (out / "probe").exists()


def test_data_that_is_not_there_is_refused_before_any_step(tmp_path, capsys):
    assert gpucheck.main(["--out", str(tmp_path / "out"), "--data", str(tmp_path / "absent.tar.gz")]) == 2
    assert "cp /work/shared/data/cifar10-jpeg.tar.gz .device/" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_call_writes_each_step_and_the_deadline_stops_the_runs_with_a_checkpoint(tmp_path):
    write_image_folder(tmp_path / "tiny", n_train=48, n_test=12)  # batch 8: a row (and a checkpoint) every 6 steps
    out = tmp_path / "out"
    first = out / "gpu-60" / "degradation" / "plain20"
    # the deadline comes once the first run has written a checkpoint: a run stopped midway, whatever the speed
    clock = lambda: time.monotonic() + (600.0 if (first / "checkpoint.pt").exists() else 0.0)
    argv = ["--tiny", "--data", str(tmp_path / "tiny"), "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert gpucheck.main([*argv, "--jobs", "1", "--iterations", "60"], clock=clock) == 0

    table, log = (out / "table.md").read_text(), (out / "gpucheck.log").read_text()
    assert "--- bench" in log and "runs| $ python -m resnet_repro.run degradation --iterations 60" in log
    (bench_csv,) = (out / "bench").glob("cpu-*.csv")
    with open(bench_csv) as f:
        assert [(r["model"], r["path"]) for r in csv.DictReader(f)] == [("resnet8", "usual"), ("resnet8", "engine")]
    for row in ("| bench | resnet8 usual |", "| bench | resnet8 engine |", "| bench | resnet8 check, 4 it |"):
        assert row in table
    # the probe: 1 and 2 copies of a finished resnet20 run, their rates, a pick
    with open(out / "probe" / "probe.csv") as f:
        probe = list(csv.DictReader(f))
    assert [r["processes"] for r in probe] == ["1", "2"] and [r["chosen"] for r in probe].count("True") == 1
    assert "| probe | resnet20 x1 |" in table and "| probe | resnet20 x2 |" in table
    for copy in ("x1/copy1", "x2/copy1", "x2/copy2"):
        run_dir = out / "probe" / copy / "degradation" / "resnet20"
        assert all((run_dir / f).exists() for f in ("metrics.csv", "config.json", "final.pt"))
    # the runs: stopped at the deadline, the first one with its rows and a checkpoint to resume from
    assert "| runs | at once | 1 (--jobs); " in table and "s wall for all | stopped at the deadline |" in table
    assert json.loads((first / "status.json").read_text())["state"] == "interrupted"
    assert (first / "checkpoint.pt").exists() and not (first / "final.pt").exists()
    with open(first / "metrics.csv") as f:
        done = int(list(csv.DictReader(f))[-1]["iteration"])
    assert 6 <= done < 60 and f"| runs | plain20 | {done}/60 it," in table
    assert "| compile | - | not in --tiny" in table and "| total |" in table


# A step without torch, so that it starts in milliseconds: says it started, then waits for a signal.
STUB = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    out.joinpath("partial").write_text("checkpoint")
    sys.exit(130)
signal.signal(signal.SIGINT, stop if sys.argv[2] == "checkpoint" else signal.SIG_IGN)
print("training", flush=True)
out.joinpath("started").write_text("")
time.sleep(60)
"""


def stub_context(tmp_path, jump, **changes):
    """A --tiny context whose clock jumps `jump` seconds once the stub has started: a deadline that comes while
    the step runs, whatever the machine's speed."""
    args = gpucheck.parse_args(["--tiny", "--out", str(tmp_path / "out")])
    plan = dataclasses.replace(gpucheck.resolve(args), **changes)
    args.device = "cpu"
    budget = supervise.Budget(plan.budget, lambda: time.monotonic() + jump * (tmp_path / "started").exists())
    return gpucheck.Context(plan, args, budget, supervise.Log(tmp_path / "log", budget))


def stub(tmp_path, on_sigint):
    return {"stub": [sys.executable, "-c", STUB, str(tmp_path), on_sigint]}


@pytest.mark.parametrize("on_sigint", ["checkpoint", "ignore"])
def test_the_deadline_interrupts_a_step_and_kills_it_if_it_does_not_stop(tmp_path, on_sigint):
    ctx = stub_context(tmp_path, jump=1e4, grace=0.5)  # past the budget's end once started
    start = time.monotonic()
    codes, lines, stopped = supervise.supervise(stub(tmp_path, on_sigint), ctx)
    assert stopped and supervise.outcome(codes, stopped) == "stopped at the deadline" and lines["stub"] == ["training"]
    assert time.monotonic() - start < 30  # not the stub's 60 s
    if on_sigint == "checkpoint":  # the runs' case: they write a checkpoint and exit
        assert codes == {"stub": 130} and (tmp_path / "partial").exists()
    else:
        assert codes == {"stub": -signal.SIGKILL} and "SIGKILL" in (tmp_path / "log").read_text()


def test_a_step_cap_stops_it_long_before_the_budget_ends(tmp_path):
    ctx = stub_context(tmp_path, jump=1000.0, budget=1e5)
    ctx.until = 100.0  # the step's cap, reached once it has started; the budget's end is far away
    codes, _, stopped = supervise.supervise(stub(tmp_path, "checkpoint"), ctx)
    assert stopped and codes == {"stub": 130} and ctx.budget.left() > 90000
