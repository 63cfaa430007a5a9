"""Signals and processes: Ctrl-C, SIGTERM and SIGKILL, to a run in this process, to the parent of `--jobs`
children and to a child. A stopped run always has its checkpoint, no process outlives its parent, no further
run starts, and the exit status says the experiment did not finish (128 + the signal's number)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TIMING, csv_rows, train_run, write_experiment, write_image_folder
from resnet_repro import run
from resnet_repro.config import TrainSpec
from resnet_repro.data import memory
from resnet_repro.engine import recipe, rundir

pytestmark = pytest.mark.slow  # subprocesses


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tiny"
    write_image_folder(root, n_train=64, n_test=8)
    return root


def experiment(tmp_path, tiny_dir, runs=("plain8", "resnet8"), iterations=400):
    return write_experiment(tmp_path / "exp.toml", tiny_dir, runs, iterations)


def start(exp, out, *extra, **popen):
    cmd = [
        sys.executable,
        "-m",
        "resnet_repro.run",
        str(exp),
        "--out",
        str(out),
        "--no-progress",
        "--no-figures",
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_rows(*run_dirs, rows=1, timeout=240):
    """Until each run has `rows` CSV rows; its process's pid (from the run's lock file)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        texts = [(d / "metrics.csv").read_text() if (d / "metrics.csv").exists() else "" for d in run_dirs]
        if all(t.count("\n") > rows for t in texts):
            return [int((d / "lock").read_text()) for d in run_dirs]
        time.sleep(0.05)
    raise AssertionError(f"no {rows} rows in {run_dirs} after {timeout} s")


def gone(pid, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def states(exp_dir):
    return {d.name: rundir.read_status(d)["state"] for d in sorted(exp_dir.iterdir()) if (d / "config.json").exists()}


@pytest.mark.parametrize("sig,code,ignore_sigint", [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)])
def test_a_signal_to_the_parent_of_jobs_stops_its_children_with_checkpoints(
    tmp_path, tiny_dir, sig, code, ignore_sigint
):
    """A scheduler's SIGTERM, or SIGINT to a parent started in the background (`&` ignores SIGINT)."""
    exp = experiment(tmp_path, tiny_dir, runs=("plain8", "resnet8", "resnet14"))
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    parent = start(exp, tmp_path / "res", "--jobs", "2", preexec_fn=ignore)
    exp_dir = tmp_path / "res" / "exp"
    children = wait_for_rows(exp_dir / "resnet14", exp_dir / "plain8")  # the costliest first, then in order
    parent.send_signal(sig)
    out, err = parent.communicate(timeout=120)
    assert parent.returncode == code, err[-2000:]
    assert all(gone(pid) for pid in children)
    assert states(exp_dir) == {"plain8": "interrupted", "resnet14": "interrupted"}  # resnet8 was not started
    assert all((exp_dir / r / "checkpoint.pt").exists() for r in ("plain8", "resnet14"))
    assert "--resume" in err


def test_children_checkpoint_and_stop_when_their_parent_is_killed(tmp_path, tiny_dir):
    exp = experiment(tmp_path, tiny_dir)
    parent = start(exp, tmp_path / "res", "--jobs", "2")
    exp_dir = tmp_path / "res" / "exp"
    children = wait_for_rows(exp_dir / "plain8", exp_dir / "resnet8")
    parent.kill()  # no chance to forward anything: the children see their stdin close
    parent.communicate(timeout=60)
    assert all(gone(pid) for pid in children)
    assert states(exp_dir) == {"plain8": "interrupted", "resnet8": "interrupted"}
    for r in ("plain8", "resnet8"):
        assert "SIGTERM" in rundir.read_status(exp_dir / r)["message"]
        assert rundir.load_checkpoint(exp_dir / r / "checkpoint.pt")["iteration"] > 0


def test_a_child_stopped_from_outside_stops_the_experiment(tmp_path, tiny_dir):
    exp = experiment(tmp_path, tiny_dir, runs=("plain8", "resnet8", "resnet14"), iterations=200)
    parent = start(exp, tmp_path / "res", "--jobs", "2")
    exp_dir = tmp_path / "res" / "exp"
    resnet14, _ = wait_for_rows(exp_dir / "resnet14", exp_dir / "plain8")
    os.kill(resnet14, signal.SIGTERM)  # say, an administrator's kill
    out, err = parent.communicate(timeout=240)
    assert parent.returncode == 143, err[-2000:]
    assert states(exp_dir) == {"plain8": "done", "resnet14": "interrupted"}  # the other one ran to its end
    # and the pending resnet8 was not started


def test_sigint_then_sigterm_half_a_second_later_exits_130(tmp_path, tiny_dir):
    exp = experiment(tmp_path, tiny_dir, runs=("resnet8",))
    proc = start(exp, tmp_path / "res", "--jobs", "1")
    wait_for_rows(tmp_path / "res" / "exp" / "resnet8")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert rundir.read_status(tmp_path / "res" / "exp" / "resnet8")["state"] == "interrupted"


def test_sigkill_then_resume_equals_an_unbroken_run(tmp_path, tiny_dir):
    exp = experiment(tmp_path, tiny_dir, runs=("resnet8",), iterations=96)
    whole = start(exp, tmp_path / "whole", "--deterministic")
    assert whole.wait(timeout=300) == 0
    broken = start(exp, tmp_path / "broken", "--deterministic")
    metrics = tmp_path / "broken" / "exp" / "resnet8" / "metrics.csv"
    wait_for_rows(metrics.parent, rows=2)  # two epochs' rows (of 12), then kill mid-run with no chance to clean up
    broken.kill()
    broken.communicate()
    assert broken.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert json.loads((metrics.parent / "status.json").read_text())["state"] == "running"
    resumed = start(exp, tmp_path / "broken", "--deterministic", "--resume")
    assert resumed.wait(timeout=300) == 0
    reference = tmp_path / "whole" / "exp" / "resnet8"
    assert csv_rows(metrics, TIMING) == csv_rows(reference / "metrics.csv", TIMING) and len(csv_rows(metrics)) == 12
    a, b = torch.load(reference / "final.pt")["model"], torch.load(metrics.parent / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# in this process


def tiny_spec(**kw):
    return TrainSpec(**{**dict(model="resnet8", batch_size=16, iterations=6, milestones=(), eval_batch_size=8), **kw})


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return memory.load(str(tiny_dir))


def test_ctrl_c_during_a_runs_last_test_starts_no_further_run(tmp_path, tiny_dir, monkeypatch, capsys):
    real, calls = recipe.evaluate, {"n": 0}

    def evaluate(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # plain8's last test pass (2 epochs of 8 iterations)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(recipe, "evaluate", evaluate)
    exp = experiment(tmp_path, tiny_dir, iterations=16)
    assert run.main([str(exp), "--out", str(tmp_path / "res"), "--no-progress", "--no-figures", "--jobs", "1"]) == 130
    assert "SIGINT: plain8 finished, the next runs were not started" in capsys.readouterr().err
    assert rundir.read_status(tmp_path / "res" / "exp" / "plain8")["state"] == "done"
    assert not (tmp_path / "res" / "exp" / "resnet8" / "config.json").exists()


def test_one_ctrl_c_delivered_twice_within_a_second_still_writes_a_checkpoint(tiny, tmp_path, monkeypatch):
    real, calls = memory.augment, {"n": 0}

    def augment(x, g):
        calls["n"] += 1
        if calls["n"] == 2:  # the terminal's SIGINT and the one `uv run` forwards
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(x, g)

    monkeypatch.setattr(memory, "augment", augment)
    with pytest.raises(rundir.Interrupted, match="SIGINT at iteration 2; checkpoint written"):
        train_run(tiny_spec(), tiny, tmp_path / "r")
    assert rundir.load_checkpoint(tmp_path / "r" / "checkpoint.pt")["iteration"] == 2


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_before_the_first_run_starts_none_and_exits_130(tmp_path, tiny_dir, monkeypatch, jobs):
    """In this process, a Ctrl-C while the data loads; with children (each loads its own data), one before the
    parent starts the first."""
    from resnet_repro.engine import stopping
    from resnet_repro.launch import local as launch

    where = "load_datasets" if jobs == "1" else "in_children"
    real = getattr(launch, where)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    def no_child(job):
        raise AssertionError(f"a child was started for {job.name}")

    monkeypatch.setattr(launch, where, interrupted)
    monkeypatch.setattr(launch, "start_child", no_child)
    handlers, active = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}, list(stopping._active)
    argv = [
        str(experiment(tmp_path, tiny_dir)),
        "--out",
        str(tmp_path / "res"),
        "--jobs",
        jobs,
        "--no-progress",
        "--no-figures",
    ]
    try:
        code = stopping.stop_requests_until_exit(lambda: run.main(argv))
    finally:
        stopping._active[:] = active
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert code == 130
    assert not list((tmp_path / "res").rglob("metrics.csv")) and not list((tmp_path / "res").rglob("checkpoint.pt"))


def test_a_signal_while_a_child_loads_its_data_starts_no_run(tmp_path, tiny_dir, monkeypatch):
    from conftest import job
    from resnet_repro import data
    from resnet_repro.engine import stopping
    from resnet_repro.launch import local as launch

    real = data.load_for

    def loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as the parent forwards it
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "load_for", loading)
    spec = tiny_spec(data=str(tiny_dir))
    with stopping.stop_requests(), pytest.raises(rundir.Interrupted, match="SIGTERM while its data loaded; the run"):
        launch.train_job(job(spec, tmp_path / "r", data_dir=str(tmp_path / "data")))
    assert not (tmp_path / "r").exists()
