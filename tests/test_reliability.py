"""Faults injected on purpose: SIGKILL, a full disk, out of memory. Nothing may be lost or duplicated."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TIMING, csv_rows, write_image_folder
from resnet_repro import data, rundir, train
from resnet_repro.config import TrainSpec

ROOT = Path(__file__).resolve().parent.parent


def rows(path):
    return csv_rows(path, drop=TIMING)


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_unbroken_run(tmp_path):
    write_image_folder(tmp_path / "tiny", n_train=64, n_test=8)
    (tmp_path / "exp.toml").write_text(f"""
runs = ["resnet8"]
[train]
data = "{tmp_path / "tiny"}"
batch_size = 8
iterations = 96
milestones = [48, 72]
eval_batch_size = 8
""")

    def command(out, *extra):
        return [
            sys.executable,
            "-m",
            "resnet_repro.run",
            str(tmp_path / "exp.toml"),
            "--out",
            str(out),
            "--no-progress",
            "--no-figures",
            "--deterministic",
            "--device",
            "cpu",
            *extra,
        ]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command(tmp_path / "whole"), check=True, env=env, capture_output=True, timeout=300)
    metrics = tmp_path / "broken" / "exp" / "resnet8" / "metrics.csv"
    proc = subprocess.Popen(command(tmp_path / "broken"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.02)  # wait for two epochs' rows (of 12), then kill mid-run with no chance to clean up
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert json.loads((metrics.parent / "status.json").read_text())["state"] == "running"
    subprocess.run(command(tmp_path / "broken", "--resume"), check=True, env=env, capture_output=True, timeout=300)
    whole = tmp_path / "whole" / "exp" / "resnet8"
    assert rows(metrics) == rows(whole / "metrics.csv") and len(rows(metrics)) == 12
    a, b = torch.load(whole / "final.pt")["model"], torch.load(metrics.parent / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tiny(tmp_path):
    write_image_folder(tmp_path / "tiny", n_train=32, n_test=8)
    return data.load(str(tmp_path / "tiny"))


def spec(**kw):
    return TrainSpec(**{**dict(model="resnet8", batch_size=16, iterations=6, milestones=(), eval_batch_size=8), **kw})


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tiny, tmp_path, monkeypatch):
    d = tmp_path / "run"
    saves = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith("checkpoint.pt.") and name.endswith(".tmp"):
            saves["n"] += 1
            if saves["n"] == 2:  # the second epoch's checkpoint finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = train.train(spec(), tiny, d, experiment="e", run="run", progress=False)
    assert result.state == "failed" and "disk full while writing" in result.message and "intact" in result.message
    state = torch.load(d / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and not list(d.glob("*.tmp"))
    assert json.loads((d / "status.json").read_text())["state"] == "failed"
    monkeypatch.undo()
    assert train.train(spec(), tiny, d, experiment="e", run="run", progress=False, resume=True).state == "done"
    assert [r["epoch"] for r in rows(d / "metrics.csv")] == ["1", "2", "3"]


def test_out_of_memory_fails_the_run_suggesting_a_smaller_batch(tiny, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(data, "augment", oom)
    result = train.train(spec(), tiny, tmp_path / "r", experiment="e", run="r", progress=False)
    assert result.state == "failed" and "out of GPU memory at batch size 16" in result.message
    assert "batch_size=8" in result.message


def test_atomic_write_never_leaves_a_half_file(tmp_path):
    path = tmp_path / "x.json"
    rundir.write_json({"a": 1}, path)

    def explode(f):
        f.write(b"{half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        rundir.write_atomic(path, explode)
    assert json.loads(path.read_text()) == {"a": 1} and not list(tmp_path.glob("*.tmp"))
