"""`run --launcher slurm`: the options, the one line without submitit or without Slurm, and the jobs themselves
through submitit's LocalExecutor (the executor of a machine without a cluster): submitted, trained, and one
signalled as Slurm signals a job whose time ends, requeued and resumed to the same result as an unbroken one."""

import json
import os
import signal
import sys
import time

import pytest
import torch

from conftest import TIMING, csv_rows, job, write_experiment, write_image_folder
from resnet_repro import config, run
from resnet_repro.engine import rundir
from resnet_repro.launch import plan, slurm

submitit = pytest.importorskip("submitit")  # in the dev group; `uv sync --extra slurm` for users


def test_time_limits_in_minutes_or_h_mm_ss():
    assert [slurm.minutes(t) for t in ("90", "4:00:00", "1:30:00", "0:00:30")] == [90, 240, 90, 1]
    assert slurm.minutes("1:30") is None and slurm.minutes("four hours") is None


def test_a_job_is_a_process_per_gpu_sharing_the_runs_cores():
    opts = slurm.DEFAULTS | {"gpus_per_run": 2, "partition": "gpu", "time": "2:00:00"}
    assert slurm.parameters(opts, "depth") == dict(
        name="depth", timeout_min=120, gpus_per_node=2, tasks_per_node=2, cpus_per_task=5, slurm_partition="gpu"
    )
    cpu = slurm.parameters(slurm.DEFAULTS | {"gpus_per_run": 0}, "depth")
    assert "gpus_per_node" not in cpu and cpu["tasks_per_node"] == 1 and cpu["cpus_per_task"] == 10


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--partition", "gpu"], "--partition apply to --launcher slurm only"),
        (["--launcher", "slurm", "--jobs", "2"], "--jobs does not apply to --launcher slurm"),
        (["--launcher", "slurm", "--device", "cuda:1"], "--device does not apply to --launcher slurm"),
        (["--launcher", "slurm", "--time", "soon"], "--time soon: give a time limit of a minute or more"),
        (["--launcher", "slurm", "--time", "0"], "--time 0: give a time limit of a minute or more"),
        (["--launcher", "slurm", "--gpus-per-run", "-1"], "--gpus-per-run must be 0 or more"),
    ],
)
def test_slurm_options_that_cannot_apply_are_usage_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        run.parse_args(["degradation", *argv])
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tiny"
    write_image_folder(root, n_train=64, n_test=8)
    return root


def experiment(tmp_path, tiny_dir, iterations=4):
    return write_experiment(tmp_path / "exp.toml", tiny_dir, ("resnet8",), iterations)


def test_without_submitit_the_launcher_says_how_to_get_it(tmp_path, tiny_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed: importing it raises ImportError
    argv = [experiment(tmp_path, tiny_dir), "--out", tmp_path / "res", "--launcher", "slurm", "--no-progress"]
    assert run.main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert err == "error: --launcher slurm needs submitit: uv sync --extra slurm (or pip install submitit)\n"


def test_without_slurm_the_launcher_says_so_in_one_line(tmp_path):
    with pytest.raises(config.SpecError, match="no Slurm here .*; submit from a login node"):
        slurm.make_executor(tmp_path / "%j")  # this machine has no srun


def local_executor(monkeypatch):
    """slurm.make_executor on this machine: submitit's LocalExecutor, which runs each job as a local process."""
    real = slurm.make_executor
    monkeypatch.setattr(slurm, "make_executor", lambda folder: real(folder, cluster="local"))


def wait_until(condition, timeout=240, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout} s")


@pytest.mark.slow
def test_runs_are_submitted_as_jobs_that_write_their_run_directories(tmp_path, tiny_dir, monkeypatch, capsys):
    local_executor(monkeypatch)
    argv = [
        experiment(tmp_path, tiny_dir),
        "--out",
        tmp_path / "res",
        "--seeds",
        "0,1",
        "--launcher",
        "slurm",
        "--gpus-per-run",
        "0",
        "--cpus-per-run",
        "1",
        "--time",
        "10",
        "--no-progress",
    ]
    assert run.main(list(map(str, argv))) == 0  # returns once submitted
    out = capsys.readouterr().out
    assert "2 runs (resnet8 x 2 seeds (0, 1))" in out and "on Slurm jobs" in out
    for name in ("resnet8", "resnet8-seed1"):
        line = next(line for line in out.splitlines() if line.startswith(f"{name}: Slurm job "))
        assert str(tmp_path / "res" / "slurm") in line and line.endswith("_log.out")
    exp_dir = tmp_path / "res" / "exp"
    done = lambda: all(rundir.read_status(exp_dir / n)["state"] == "done" for n in ("resnet8", "resnet8-seed1"))  # noqa: E731
    wait_until(done, what="done")
    assert json.loads((exp_dir / "resnet8-seed1" / "config.json").read_text())["seed"] == 1
    assert run.main(list(map(str, argv))) == 0  # both done: nothing submitted
    assert "done already, not submitted: resnet8, resnet8-seed1" in capsys.readouterr().out


@pytest.mark.slow
def test_a_job_signalled_as_its_time_ends_is_requeued_and_resumes_to_the_unbroken_result(tmp_path, tiny_dir):
    exp = config.load_experiment(str(experiment(tmp_path, tiny_dir, iterations=96)))
    options = dict(data_dir=str(tmp_path / "data"), deterministic=True, threads=1)
    whole, broken = (plan.plan_jobs(exp, tmp_path / d, ["cpu"], options)[0] for d in ("whole", "broken"))
    opts = slurm.DEFAULTS | {"gpus_per_run": 0, "cpus_per_run": 1, "time": "10"}
    executor = slurm.make_executor(tmp_path / "slurm" / "%j", cluster="local")
    reference, job = slurm.submit([whole, broken], opts, tmp_path / "slurm", executor)
    metrics = tmp_path / "broken" / "exp" / "resnet8" / "metrics.csv"
    wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") > 2, what="2 rows")  # of 12
    os.kill(int((metrics.parent / "lock").read_text()), signal.SIGUSR2)  # what Slurm sends 90 s before the end
    assert job.result() == reference.result() == "resnet8: done"
    log = job.stdout() + job.stderr()
    assert "Requeued job" in log and "resnet8: resuming at iteration" in log, log[-3000:]
    expected = tmp_path / "whole" / "exp" / "resnet8"
    assert csv_rows(metrics, TIMING) == csv_rows(expected / "metrics.csv", TIMING) and len(csv_rows(metrics)) == 12
    a, b = torch.load(expected / "final.pt")["model"], torch.load(metrics.parent / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_refused_submission_with_overwrite_loses_no_run(tmp_path, tiny_dir):
    exp_dir = tmp_path / "res" / "pair" / "resnet8"
    exp_dir.mkdir(parents=True)
    finished = {"config.json": "{}", "metrics.csv": "epoch\n1\n", "status.json": '{"state": "done"}'}
    for name, text in finished.items():
        (exp_dir / name).write_text(text)

    class Refusing:
        def update_parameters(self, **kwargs):
            pass

        def map_array(self, fn, items):
            raise RuntimeError("sbatch: error: invalid partition specified: gpux\nsubmission failed")

    jobs = [job(config.TrainSpec(model="resnet8", data=str(tiny_dir)), exp_dir, experiment="pair", overwrite=True)]
    opts = {"gpus_per_run": 0, "cpus_per_run": 1, "time": "10", "partition": "gpux", "account": None}
    with pytest.raises(
        config.SpecError, match="refused, nothing was submitted and no run changed: sbatch: error: invalid partition"
    ):
        slurm.submit(jobs, opts, tmp_path / "slurm", Refusing())
    assert {p.name: p.read_text() for p in exp_dir.iterdir() if p.name != "lock"} == finished
