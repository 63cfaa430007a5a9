"""The run directory's own contract: what the engine writes, run and the analysis read back the same way."""

import json
import math

import pytest

from resnet_repro.analysis import results
from resnet_repro.engine import metrics, rundir


def row(it, train_err, test_err, seconds=1.5):
    return {
        "experiment": "e",
        "run": "resnet8",
        "model": "resnet8",
        "depth": 8,
        "residual": True,
        "epoch": it // 10,
        "iteration": it,
        "lr": 0.1,
        "train_loss": 1.0,
        "train_err": train_err,
        "test_loss": 1.0,
        "test_err": test_err,
        "epoch_seconds": seconds,
        "images_per_second": 100.0,
    }


def test_rows_read_back_typed_and_truncate_to_the_checkpoints_count(tmp_path):
    path = tmp_path / "metrics.csv"
    for it, (train_err, test_err) in zip((10, 20, 30), ((50.0, 60.0), (40.0, 45.0), (30.0, 50.0))):
        metrics.append_row(path, row(it, train_err, test_err))
    rows = metrics.read_metrics(path)
    assert [r["iteration"] for r in rows] == [10, 20, 30] and rows[0]["residual"] is True
    assert results.outcome(rows) == {
        "iterations": 30,
        "final_train_err": 30.0,
        "final_test_err": 50.0,
        "best_test_err": 45.0,
        "minutes": 4.5 / 60,
        "images_per_second": 100.0,
    }
    slowed = [dict(r, images_per_second=ips) for r, ips in zip(rows, (100.0, 10.0, 90.0))]  # one row slowed down
    assert results.outcome(slowed)["images_per_second"] == 90.0
    metrics.truncate_rows(path, 2)
    assert [r["iteration"] for r in metrics.read_metrics(path)] == [10, 20]
    assert path.read_text().splitlines()[0].split(",") == list(metrics.COLUMNS)


def test_a_row_being_written_is_an_error_to_the_reader_and_zero_to_the_progress_bar(tmp_path):
    metrics.append_row(tmp_path / "metrics.csv", row(10, 50.0, 60.0))
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("e,resnet8,resnet8,8,True,2,20,0.1")  # cut off
    with pytest.raises(rundir.RunDirError, match="line 3: cut off"):
        metrics.read_metrics(tmp_path / "metrics.csv")
    assert metrics.last_iteration(tmp_path) == 0
    assert math.isnan(results.outcome([])["final_train_err"])  # a run with no row yet


def test_prepare_accepts_the_same_config_and_refuses_a_changed_one(tmp_path):
    d = tmp_path / "run"
    config = {"run": "r", "lr": 0.1, "milestones": (2, 3), "device": "cpu", "dataset_checksum": "abc", "data": "x"}
    assert rundir.prepare(d, config, resume=False, overwrite=False) is False
    with pytest.raises(rundir.RunDirError, match="already holds a run; pass --resume"):
        rundir.prepare(d, config, resume=False, overwrite=False)
    moved = {**config, "device": "cuda"}  # where it runs may change on --resume
    assert rundir.prepare(d, moved, resume=True, overwrite=False) is False  # no checkpoint yet
    added = {**config, "ramp": 0}  # a key added since the run started, at its default
    assert rundir.prepare(d, added, resume=True, overwrite=False) is False
    with pytest.raises(rundir.RunDirError, match=r"different config \(ramp: None -> 5\)"):
        rundir.prepare(d, {**config, "ramp": 5}, resume=True, overwrite=False)
    with pytest.raises(rundir.RunDirError, match=r"different config \(lr: 0.1 -> 0.2\)"):
        rundir.prepare(d, {**config, "lr": 0.2}, resume=True, overwrite=False)
    assert rundir.prepare(d, {**config, "lr": 0.2}, resume=False, overwrite=True) is False
    assert json.loads((d / "config.json").read_text())["lr"] == 0.2


def test_the_same_data_under_another_path_is_the_same_run_and_other_data_is_not(tmp_path):
    d = tmp_path / "run"
    config = {"run": "r", "data": "../datasets/c.tar.gz", "dataset_checksum": "abc", "data_dir": "data"}
    rundir.prepare(d, config, resume=False, overwrite=False)
    elsewhere = {**config, "data": "/abs/path/c.tar.gz", "data_dir": "/other/data"}  # the same images, named otherwise
    assert rundir.prepare(d, elsewhere, resume=True, overwrite=False) is False
    other = {**elsewhere, "dataset_checksum": "def"}
    with pytest.raises(rundir.RunDirError) as e:
        rundir.prepare(d, other, resume=True, overwrite=False)
    message = str(e.value)
    assert "data: '../datasets/c.tar.gz' -> '/abs/path/c.tar.gz' (other images" in message
    assert "--out DIR" in message and "--overwrite deletes this run" in message  # never --overwrite without saying so


def test_status_and_unfinished_runs(tmp_path):
    for name, state in (("a", "done"), ("b", "interrupted"), ("c", "running")):
        (tmp_path / name).mkdir()
        rundir.write_json({"run": name}, tmp_path / name / "config.json")
        rundir.write_status(tmp_path / name, state)
    assert rundir.read_status(tmp_path / "c")["state"] == "stopped"  # "running", but nobody holds its lock
    with rundir.RunLock(tmp_path / "c"):
        assert rundir.read_status(tmp_path / "c")["state"] == "running"
        with pytest.raises(rundir.RunDirError, match="in use by another process"):
            rundir.RunLock(tmp_path / "c").__enter__()
    assert rundir.unfinished(tmp_path, ["a", "b", "c", "d"]) == ["b", "c"]
    assert rundir.read_status(tmp_path / "d", absent="not started")["state"] == "not started"


def test_rows_are_never_appended_under_another_header(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,test_err\n1,50.0\n")  # not this suite's columns: rows would land in the wrong ones
    with pytest.raises(rundir.RunFailed, match="its columns are epoch,test_err, not experiment,run,"):
        metrics.append_row(path, row(10, 50.0, 60.0))
    assert path.read_text() == "epoch,test_err\n1,50.0\n"
