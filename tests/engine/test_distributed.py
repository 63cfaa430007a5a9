"""torchrun with 2 gloo processes on CPU: the same global batches and results as one process (within
the tolerance that per-process BN statistics allow), rank 0 alone writing, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TIMING, write_image_folder, write_jpeg_folder
from conftest import csv_rows as rows
from resnet_repro import run
from resnet_repro.config import TrainSpec
from resnet_repro.data import memory, stream
from resnet_repro.engine import recipe
from resnet_repro.models import build_model

pytestmark = pytest.mark.slow  # torchrun subprocesses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    write_image_folder(tmp / "tiny", n_train=64, n_test=16)
    (tmp / "exp.toml").write_text(f"""
runs = ["resnet8"]
[train]
data = "{tmp / "tiny"}"
batch_size = 16
iterations = 24
milestones = [12, 18]
eval_batch_size = 8
""")
    return tmp


def torchrun(tmp, out, *extra, **popen):
    args = [str(tmp / "exp.toml"), "--out", str(tmp / out), "--no-progress", "--no-figures", "--deterministic"]
    return launch("-m", "resnet_repro.run", *args, *extra, **popen)


def launch(*target, **popen):
    """torchrun with 2 processes of `target` (a script, or -m and a module): its completed process, or with
    `popen` keywords the running one."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a hung job: take its processes down with it, not just torchrun
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def two(setup):
    result = torchrun(setup, "two")
    assert result.returncode == 0, result.stderr[-2000:]
    return setup / "two" / "exp" / "resnet8", result.stdout


def test_two_processes_match_one_within_tolerance(setup, two):
    assert (
        run.main(
            [
                str(setup / "exp.toml"),
                "--out",
                str(setup / "one"),
                "--no-progress",
                "--no-figures",
                "--deterministic",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    one = rows(setup / "one" / "exp" / "resnet8" / "metrics.csv")
    two_dir, stdout = two
    both = rows(two_dir / "metrics.csv")
    key = lambda r: (r["epoch"], r["iteration"], r["lr"])  # noqa: E731
    assert [key(r) for r in both] == [key(r) for r in one]  # the same global batches and schedule
    for a, b in zip(one, both):  # BN statistics over 8 images per process instead of 16: close, not equal
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=0.03)
        assert float(b["test_loss"]) == pytest.approx(float(a["test_loss"]), rel=0.03)
    assert stdout.count("run ") == 1 and "x 2 processes" in stdout  # rank 0 alone prints the summary
    config = json.loads((two_dir / "config.json").read_text())
    assert config["world_size"] == 2
    # Rank 0 saved the weights the logged test error belongs to.
    spec = TrainSpec(model="resnet8", eval_batch_size=8)
    model = build_model("resnet8", 3)
    model.load_state_dict(torch.load(two_dir / "final.pt")["model"])
    ds = memory.load(str(setup / "tiny"))
    _, test_err, _ = recipe.evaluate(model, ds.test, ds.mean, spec, "cpu")
    assert test_err == pytest.approx(float(both[-1]["test_err"]), abs=1e-4)


def test_no_gloo_thread_outlives_the_run(setup, tmp_path):
    """A gloo worker thread still alive when Python exits may free a tensor then and abort its process
    (SIGABRT, "terminate called without an active exception": about one run of this module in 15 here).
    run.main leaves none behind on either process: its process group is gone before the interpreter exits."""
    script = tmp_path / "threads.py"
    script.write_text(f"""
import os
from resnet_repro import run
args = [{str(setup / "exp.toml")!r}, "--out", {str(tmp_path / "out")!r}, "--no-progress", "--no-figures"]
code = run.main(args)
names = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task")]
report = f"exit {{code}} gloo threads {{sorted(n for n in names if 'gloo' in n)}}"
open({str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.txt", "w").write(report)
""")
    result = launch(str(script))  # a file per rank: two processes' prints to one pipe may interleave
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert reports == ["exit 0 gloo threads []"] * 2, reports


def test_killed_torchrun_job_resumes_to_the_same_result(setup, two):
    metrics = setup / "broken" / "exp" / "resnet8" / "metrics.csv"
    proc = torchrun(setup, "broken", start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.02)  # the first of 6 epochs' rows
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, no chance to clean up
    proc.wait()
    assert len(rows(metrics)) < 6, "the job finished before it could be killed"
    result = torchrun(setup, "broken", "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert rows(metrics, drop=TIMING) == rows(two[0] / "metrics.csv", drop=TIMING)
    a, b = torch.load(two[0] / "final.pt")["model"], torch.load(metrics.parent / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_stream_jpegs_each_decoding_its_shard(tmp_path):

    write_jpeg_folder(tmp_path / "jpeg", n_train=48, n_val=12)
    (tmp_path / "exp.toml").write_text(f"""
runs = ["resnet8"]
[train]
data = "{tmp_path / "jpeg"}"
loader = "stream"
image_size = 32
scale = [36, 64]
test_resize = 36
ten_crop = true
batch_size = 16
iterations = 6
milestones = [3]
eval_batch_size = 20
""")
    result = torchrun(tmp_path, "two", "--data-dir", str(tmp_path / "data"), "--workers", "1")
    assert result.returncode == 0, result.stderr[-6000:]
    one_process = [str(tmp_path / "exp.toml"), "--out", str(tmp_path / "one"), "--data-dir", str(tmp_path / "data")]
    assert run.main([*one_process, *"--no-progress --no-figures --deterministic --device cpu --workers 0".split()]) == 0
    one, two = (rows(tmp_path / d / "exp" / "resnet8" / "metrics.csv") for d in ("one", "two"))
    assert (
        [(r["epoch"], r["iteration"]) for r in two]
        == [(r["epoch"], r["iteration"]) for r in one]
        == [("1", "3"), ("2", "6")]
    )
    # the same images and crops; BN over 8 images per process instead of 16 (this tiny task is learnt within
    # the first epoch, after which the losses are too small to compare)
    assert float(two[0]["train_loss"]) == pytest.approx(float(one[0]["train_loss"]), rel=0.05)
    ten = [json.loads((tmp_path / d / "exp" / "resnet8" / "evaluation.json").read_text()) for d in ("one", "two")]
    assert ten[0]["images"] == ten[1]["images"] == 12
    # the 2-process 10-crop test (each process a shard, rank 0's BN statistics) is the final weights' on all 12 images
    ds = stream.load(str(tmp_path / "jpeg"), tmp_path / "data", crop=32, test_resize=36, scale=(36, 64))
    model = build_model("resnet8", ds.num_classes)
    model.load_state_dict(torch.load(tmp_path / "two" / "exp" / "resnet8" / "final.pt", weights_only=True)["model"])
    loss, top1, _ = recipe.evaluate(
        model, ds.test, ds.mean, TrainSpec(model="resnet8", eval_batch_size=20), "cpu", views=10
    )
    assert ten[1]["top1_err"] == pytest.approx(top1, abs=1e-3) and ten[1]["test_loss"] == pytest.approx(loss, rel=1e-4)


def test_a_run_failing_on_one_process_ends_the_whole_job(tmp_path):
    """A bad image met by one process (its shard) fails the run there; the others, inside the run's collectives,
    stop too instead of waiting for good, no further run starts, and each says why in one line."""
    root = write_jpeg_folder(tmp_path / "jpeg", n_train=48, n_val=12)
    stream.load(str(root), tmp_path / "data", crop=32, test_resize=36, scale=(36, 64))  # the mean, cached
    bad = sorted((root / "train").rglob("*.JPEG"))[7]
    bad.write_bytes(b"x" * bad.stat().st_size)  # the same size: the same dataset, so the cached mean is used
    (tmp_path / "exp.toml").write_text(f"""
runs = ["resnet8", "plain8"]
[train]
data = "{root}"
loader = "stream"
image_size = 32
scale = [36, 64]
test_resize = 36
batch_size = 16
iterations = 6
milestones = [3]
eval_batch_size = 20
""")
    options = ("--data-dir", str(tmp_path / "data"), "--workers", "1")
    result = torchrun(tmp_path, "out", *options)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"resnet8: FAILED (process 1): cannot decode image {bad}" in result.stderr  # the process that met it
    assert "resnet8: FAILED: another process of this torchrun job stopped" in result.stderr  # rank 0, waiting on it
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr
    runs = tmp_path / "out" / "exp"
    assert json.loads((runs / "resnet8" / "status.json").read_text())["state"] == "failed"
    assert not (runs / "plain8" / "status.json").exists()  # not started
