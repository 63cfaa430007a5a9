"""The second reliability pass: each case a hostile afternoon of use broke, reproduced, then fixed."""

import errno
import json
import os
import signal
import tarfile

import pytest
import torch

from conftest import write_image_folder
from resnet_repro import analysis, data, files, run, rundir, train
from resnet_repro.config import TrainSpec


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tiny"
    write_image_folder(root, n_train=32, n_test=8)
    return root


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return data.load(str(tiny_dir))


def spec(**kw):
    return TrainSpec(
        **{**dict(model="resnet8", data="tiny", batch_size=16, iterations=6, milestones=(), eval_batch_size=8), **kw}
    )


def train_run(ds, run_dir, **kw):
    return train.train(spec(), ds, run_dir, experiment="e", run="r", progress=False, **kw)


def experiment(tmp_path, tiny_dir):
    path = tmp_path / "pair.toml"
    path.write_text(
        f'runs = ["plain8", "resnet8"]\n[train]\ndata = "{tiny_dir}"\nbatch_size = 16\niterations = 4\n'
        f"milestones = [2, 3]\neval_batch_size = 8\n"
    )
    return path


def cli(*argv):
    return run.main([*map(str, argv), "--no-progress", "--no-figures", "--jobs", "1"])


# 1. a row written before the first checkpoint is not kept twice


def test_rows_of_a_start_that_died_before_its_first_checkpoint_are_not_duplicated(tiny, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train_run(tiny, whole, deterministic=True)
    train_run(tiny, broken, deterministic=True)
    lines = (broken / "metrics.csv").read_text().splitlines(keepends=True)
    (broken / "metrics.csv").write_text("".join(lines[:2]))  # the first row made it, its checkpoint did not
    (broken / "checkpoint.pt").unlink(missing_ok=True)
    (broken / "final.pt").unlink()
    rundir.write_status(broken, "running")
    assert train_run(tiny, broken, resume=True, deterministic=True).state == "done"
    drop = lambda text: [line.split(",")[:12] for line in text.splitlines()]  # noqa: E731  (timing columns differ)
    assert drop((broken / "metrics.csv").read_text()) == drop((whole / "metrics.csv").read_text())
    analysis.load_runs(broken)  # and analysis reads it


# 2. signals


def test_ctrl_c_during_a_runs_last_test_starts_no_further_run(tmp_path, tiny_dir, monkeypatch, capsys):
    real, calls = train.evaluate, {"n": 0}

    def evaluate(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # plain8's last test pass (4 iterations, 2 per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(train, "evaluate", evaluate)
    assert cli(experiment(tmp_path, tiny_dir), "--out", tmp_path / "res") == 130
    assert "SIGINT: plain8 finished, the next runs were not started" in capsys.readouterr().err
    assert rundir.read_status(tmp_path / "res" / "pair" / "plain8")["state"] == "done"
    assert not (tmp_path / "res" / "pair" / "resnet8" / "config.json").exists()


def test_one_ctrl_c_delivered_twice_within_a_second_still_writes_a_checkpoint(tiny, tmp_path, monkeypatch):
    real, calls = data.augment, {"n": 0}

    def augment(x, g):
        calls["n"] += 1
        if calls["n"] == 2:  # the terminal's SIGINT and the one `uv run` forwards
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(x, g)

    monkeypatch.setattr(data, "augment", augment)
    with pytest.raises(train.Interrupted, match="SIGINT at iteration 2; checkpoint written"):
        train_run(tiny, tmp_path / "r")
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["iteration"] == 2


# 3. one line, no traceback


@pytest.mark.parametrize("argv,match", [
    (["--device", "foo"], "--device foo: foo is not a device"),
    (["--device", "cpu,"], "an empty item is not a device"),
    (["--device", "mps"], "MPS is not available here"),
    (["--runs", ""], "--runs names no run"),
    (["--seed", str(2**70)], "--seed must be between 0 and 2**63 - 1"),
])  # fmt: skip
def test_bad_options_exit_2_with_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        run.parse_args(["degradation", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err and "Traceback" not in err


def test_cuda_without_a_gpu_is_a_usage_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert run.device_error("cuda") == "--device cuda: no such CUDA GPU here (0 visible); use --device cpu"


@pytest.mark.parametrize("flag", ["--out", "--data-dir", "--figures"])
def test_a_directory_option_naming_a_file_is_a_usage_error(tmp_path, flag, capsys):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as e:
        run.parse_args(["degradation", flag, str(tmp_path / "f")])
    assert e.value.code == 2 and f"{flag} {tmp_path / 'f'} is a file" in capsys.readouterr().err


@pytest.mark.parametrize("content,match", [
    (b'runs = ["plain20"]\ntrain = 5\n', "train must be a table"),
    (b'runs = ["plain20"]\nrun = 3\n', "run must be a table"),
    (b'runs = ["plain20"]\n[run]\nplain20 = 1\n', "run.plain20 must be a table"),
    (b'runs = ["plain20"]\n# \xff\xfe\n', "not UTF-8 text"),
    (None, "is not a file"),
])  # fmt: skip
def test_bad_experiment_files_exit_2_with_one_line(tmp_path, content, match, capsys):
    path = tmp_path / "x.toml"
    path.mkdir() if content is None else path.write_bytes(content)
    assert cli(path, "--out", tmp_path / "res") == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_an_archive_that_is_not_a_tar_is_one_line(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(data.DataError) as e:
        data.load(str(tmp_path / "x.tar.gz"), data_dir=tmp_path / "cache")
    assert "not a tar archive" in str(e.value) and "\n" not in str(e.value)


def test_an_undecodable_image_names_the_file_not_a_buffer(tmp_path):
    write_image_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "bird" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(data.DataError) as e:
        data.load(str(tmp_path / "d"))
    assert "train/bird/bad.png" in str(e.value) and "BytesIO" not in str(e.value)


# analysis


def analysed_run(tmp_path, tiny):
    train_run(tiny, tmp_path / "e" / "r")
    return tmp_path / "e" / "r"


@pytest.mark.parametrize("file,change,match", [
    ("metrics.csv", lambda b: b + b"\xff\xfe\n", "metrics.csv: not UTF-8 text"),
    ("config.json", lambda b: json.dumps({**json.loads(b), "params": 1.5}).encode(), "params must be an integer, not 1.5"),
    ("config.json", lambda b: json.dumps({**json.loads(b), "seed": "zero"}).encode(), "seed must be an integer, not 'zero'"),
    ("config.json", lambda b: json.dumps({**json.loads(b), "iterations": "8k"}).encode(), "iterations must be an integer, not '8k'"),
])  # fmt: skip
def test_analysis_names_the_damaged_file(tmp_path, tiny, file, change, match, capsys):
    d = analysed_run(tmp_path, tiny)
    (d / file).write_bytes(change((d / file).read_bytes()))
    with pytest.raises(SystemExit) as e:
        analysis.main([str(d), "--no-fig7", "--out", str(tmp_path / "figs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert match in err and str(d / file) in err


def test_analysis_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as e:
        analysis.main([str(tmp_path), "--out", str(tmp_path / "f")])
    assert e.value.code == 2 and "is a file" in capsys.readouterr().err


# 4. a full disk while the data cache is written


def test_disk_full_while_caching_the_data_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "d")
    with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "d", arcname="d")

    def full(fd):  # the decoded images are half written when the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(data.DataError, match="disk full while caching the decoded d.tar.gz"):
        data.load(str(tmp_path / "d.tar.gz"), data_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "cache").iterdir()) == []


# 5. damaged or abandoned run directories


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.json", "status.json"])
def test_a_cut_off_run_file_is_one_line_naming_it(tiny, tmp_path, monkeypatch, name, capsys):
    d = tmp_path / "r"
    real, calls = data.augment, {"n": 0}

    def augment(x, g):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(x, g)

    monkeypatch.setattr(data, "augment", augment)
    with pytest.raises(train.Interrupted):
        train_run(tiny, d)
    monkeypatch.undo()
    content = (d / name).read_bytes()
    (d / name).write_bytes(content[: len(content) // 2])
    with pytest.raises(rundir.RunDirError, match=rf"{d / name}.*damaged"):
        train_run(tiny, d, resume=True)


def test_a_run_whose_process_died_reads_as_stopped_not_running(tiny, tmp_path):
    d = tmp_path / "r"
    train_run(tiny, d)
    rundir.write_status(d, "running")  # as a SIGKILL or a lost machine leaves it
    assert rundir.read_status(d)["state"] == "stopped"
    assert set(analysis.load_runs(d).state) == {"stopped"}
    with rundir.RunLock(d):  # while a process holds the run, it is running
        assert rundir.read_status(d)["state"] == "running"


def test_an_unknown_crash_marks_the_run_failed_with_its_one_line(tiny, tmp_path, monkeypatch):
    def crash(*a, **k):
        raise ZeroDivisionError("something nobody expected")

    monkeypatch.setattr(data, "augment", crash)
    with pytest.raises(ZeroDivisionError):
        train_run(tiny, tmp_path / "r")
    assert rundir.read_status(tmp_path / "r") == {
        "state": "failed",
        "message": "ZeroDivisionError: something nobody expected",
    }


# 6. smaller


def test_disk_full_on_the_first_checkpoint_does_not_claim_a_previous_one(tmp_path, monkeypatch):
    real = os.fsync

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(rundir.DiskFull) as e:
        rundir.write_json({"a": 1}, tmp_path / "x.json")
    assert "no x.json was written" in str(e.value) and "intact" not in str(e.value)
    monkeypatch.setattr(os, "fsync", real)


def test_the_changed_config_message_prints_lists_as_lists(tiny, tmp_path):
    train_run(tiny, tmp_path / "r")
    with pytest.raises(rundir.RunDirError, match=r"milestones: \[\] -> \[2\]"):
        train.train(spec(milestones=(2,)), tiny, tmp_path / "r", experiment="e", run="r", progress=False, resume=True)
