"""Faults: damaged or foreign files, bad values and options, a full disk, out of memory, an unusable --out. Each
ends with one clear line, and nothing written before is lost or duplicated. (Signals: tests/test_signals.py.)"""

import errno
import json
import os
import signal
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TIMING, csv_rows, train_run, write_image_folder, write_run
from resnet_repro import data, files, run
from resnet_repro.analysis import cli as analysis
from resnet_repro.analysis import inspection
from resnet_repro.config import TrainSpec
from resnet_repro.data import memory
from resnet_repro.engine import rundir
from resnet_repro.engine.metrics import read_metrics as metrics_rows
from resnet_repro.models import parse_name as models_parse


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tiny"
    write_image_folder(root, n_train=32, n_test=8)
    return root


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return memory.load(str(tiny_dir))


def spec(**kw):
    return TrainSpec(
        **{**dict(model="resnet8", data="tiny", batch_size=16, iterations=6, milestones=(), eval_batch_size=8), **kw}
    )


def train_tiny(ds, run_dir, **kw):
    return train_run(spec(), ds, run_dir, experiment="e", run="r", **kw)


def experiment(tmp_path, tiny_dir):
    path = tmp_path / "pair.toml"
    path.write_text(
        f'runs = ["plain8", "resnet8"]\n[train]\ndata = "{tiny_dir}"\nbatch_size = 16\niterations = 4\n'
        f"milestones = [2, 3]\neval_batch_size = 8\n"
    )
    return path


def cli(*argv):
    return run.main([*map(str, argv), "--no-progress", "--no-figures", "--jobs", "1"])


# a row written before the first checkpoint is not kept twice


def test_rows_of_a_start_that_died_before_its_first_checkpoint_are_not_duplicated(tiny, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train_tiny(tiny, whole, deterministic=True)
    train_tiny(tiny, broken, deterministic=True)
    lines = (broken / "metrics.csv").read_text().splitlines(keepends=True)
    (broken / "metrics.csv").write_text("".join(lines[:2]))  # the first row made it, its checkpoint did not
    (broken / "checkpoint.pt").unlink(missing_ok=True)
    (broken / "final.pt").unlink()
    rundir.write_status(broken, "running")
    assert train_tiny(tiny, broken, resume=True, deterministic=True).state == "done"
    drop = lambda text: [line.split(",")[:12] for line in text.splitlines()]  # noqa: E731  (timing columns differ)
    assert drop((broken / "metrics.csv").read_text()) == drop((whole / "metrics.csv").read_text())
    analysis.load_runs(broken)  # and analysis reads it


# one line, no traceback


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--device", "foo"], "--device foo: foo is not a device"),
        (["--device", "cpu,"], "an empty item is not a device"),
        (["--device", "mps"], "MPS is not available here"),
        (["--runs", ""], "--runs names no run"),
        (["--seed", str(2**70)], "--seed must be between 0 and 2**63 - 1"),
    ],
)
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


@pytest.mark.parametrize(
    "content,match",
    [
        (b'runs = ["plain20"]\ntrain = 5\n', "train must be a table"),
        (b'runs = ["plain20"]\nrun = 3\n', "run must be a table"),
        (b'runs = ["plain20"]\n[run]\nplain20 = 1\n', "run.plain20 must be a table"),
        (b'runs = ["plain20"]\n# \xff\xfe\n', "not UTF-8 text"),
        (None, "is not a file"),
    ],
)
def test_bad_experiment_files_exit_2_with_one_line(tmp_path, content, match, capsys):
    path = tmp_path / "x.toml"
    path.mkdir() if content is None else path.write_bytes(content)
    assert cli(path, "--out", tmp_path / "res") == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_an_archive_that_is_not_a_tar_is_one_line(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(data.DataError) as e:
        memory.load(str(tmp_path / "x.tar.gz"), data_dir=tmp_path / "cache")
    assert "not a tar archive" in str(e.value) and "\n" not in str(e.value)


def test_an_undecodable_image_names_the_file_not_a_buffer(tmp_path):
    write_image_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "bird" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(data.DataError) as e:
        memory.load(str(tmp_path / "d"))
    assert "train/bird/bad.png" in str(e.value) and "BytesIO" not in str(e.value)


# analysis


def analysed_run(tmp_path):
    write_run(tmp_path, "resnet8", experiment="e")
    return tmp_path / "e" / "resnet8"


@pytest.mark.parametrize(
    "file,change,match",
    [
        ("metrics.csv", lambda b: b + b"\xff\xfe\n", "metrics.csv: not UTF-8 text"),
        (
            "config.json",
            lambda b: json.dumps({**json.loads(b), "params": 1.5}).encode(),
            "params must be an integer, not 1.5",
        ),
        (
            "config.json",
            lambda b: json.dumps({**json.loads(b), "seed": "zero"}).encode(),
            "seed must be an integer, not 'zero'",
        ),
        (
            "config.json",
            lambda b: json.dumps({**json.loads(b), "iterations": "8k"}).encode(),
            "iterations must be an integer, not '8k'",
        ),
    ],
)
def test_analysis_names_the_damaged_file(tmp_path, file, change, match, capsys):
    d = analysed_run(tmp_path)
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


# a full disk


def test_disk_full_while_caching_the_data_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "d")
    with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "d", arcname="d")

    def full(fd):  # the decoded images are half written when the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(data.DataError, match="disk full while caching the decoded d.tar.gz"):
        memory.load(str(tmp_path / "d.tar.gz"), data_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "cache").iterdir()) == []


# damaged, foreign or abandoned run directories


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.json", "status.json"])
def test_a_cut_off_run_file_is_one_line_naming_it(tiny, tmp_path, monkeypatch, name, capsys):
    d = tmp_path / "r"
    real, calls = memory.augment, {"n": 0}

    def augment(x, g):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(x, g)

    monkeypatch.setattr(memory, "augment", augment)
    with pytest.raises(rundir.Interrupted):
        train_tiny(tiny, d)
    monkeypatch.undo()
    content = (d / name).read_bytes()
    (d / name).write_bytes(content[: len(content) // 2])
    with pytest.raises(rundir.RunDirError, match=rf"{d / name}.*damaged"):
        train_tiny(tiny, d, resume=True)


def test_a_run_whose_process_died_reads_as_stopped_not_running(tiny, tmp_path):
    d = tmp_path / "r"
    train_tiny(tiny, d)
    rundir.write_status(d, "running")  # as a SIGKILL or a lost machine leaves it
    assert rundir.read_status(d)["state"] == "stopped"
    assert set(analysis.load_runs(d).state) == {"stopped"}
    with rundir.RunLock(d):  # while a process holds the run, it is running
        assert rundir.read_status(d)["state"] == "running"


def test_an_unknown_crash_marks_the_run_failed_with_its_one_line(tiny, tmp_path, monkeypatch):
    def crash(*a, **k):
        raise ZeroDivisionError("something nobody expected")

    monkeypatch.setattr(memory, "augment", crash)
    with pytest.raises(ZeroDivisionError):
        train_tiny(tiny, tmp_path / "r")
    assert rundir.read_status(tmp_path / "r") == {
        "state": "failed",
        "message": "ZeroDivisionError: something nobody expected",
    }


# smaller


def test_disk_full_on_the_first_checkpoint_does_not_claim_a_previous_one(tmp_path, monkeypatch):
    real = os.fsync

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(files.DiskFull) as e:
        rundir.write_json({"a": 1}, tmp_path / "x.json")
    assert "no x.json was written" in str(e.value) and "intact" not in str(e.value)
    monkeypatch.setattr(os, "fsync", real)


def test_the_changed_config_message_prints_lists_as_lists(tmp_path):
    rundir.prepare(tmp_path / "r", {"run": "r", "milestones": []}, resume=False, overwrite=False)
    with pytest.raises(rundir.RunDirError, match=r"milestones: \[\] -> \[2\]"):
        rundir.prepare(tmp_path / "r", {"run": "r", "milestones": (2,)}, resume=True, overwrite=False)


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
    result = train_run(spec(), tiny, d)
    assert result.state == "failed" and "disk full while writing" in result.message and "intact" in result.message
    state = torch.load(d / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and not list(d.glob("*.tmp"))
    assert json.loads((d / "status.json").read_text())["state"] == "failed"
    monkeypatch.undo()
    assert train_run(spec(), tiny, d, resume=True).state == "done"
    assert [r["epoch"] for r in csv_rows(d / "metrics.csv", TIMING)] == ["1", "2", "3"]


def test_out_of_memory_fails_the_run_suggesting_a_smaller_batch(tiny, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(memory, "augment", oom)
    result = train_run(spec(), tiny, tmp_path / "r")
    assert result.state == "failed" and "out of GPU memory at batch size 16" in result.message
    assert "batch_size=8" in result.message


def test_atomic_write_never_leaves_a_half_file(tmp_path):
    path = tmp_path / "x.json"
    rundir.write_json({"a": 1}, path)

    def explode(f):
        f.write(b"{half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        files.write_atomic(path, explode)
    assert json.loads(path.read_text()) == {"a": 1} and not list(tmp_path.glob("*.tmp"))


# files someone handed over


class RunsCode:
    """A pickle that runs a shell command when it is loaded: what a malicious checkpoint.pt could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("state", ["interrupted", "done"])
def test_a_checkpoint_that_would_run_code_is_refused_not_run(tiny, tmp_path, state):
    d, marker = tmp_path / "r", tmp_path / "MARKER"
    train_tiny(tiny, d)
    rundir.write_status(d, state)  # --resume loads it; a done run is checked before it is skipped
    torch.save({"model": {}, "optimizer": {}, "rng": {}, "iteration": 1, "x": RunsCode(marker)}, d / "checkpoint.pt")
    if state == "done":
        assert train_tiny(tiny, d).state == "skipped"  # a finished run does not read its checkpoint at all
    else:
        with pytest.raises(rundir.RunDirError) as e:
            train_tiny(tiny, d, resume=True)
        assert "\n" not in str(e.value) and "weights_only=False" not in str(e.value)
        assert "refused: it holds objects that only code could rebuild" in str(e.value)
    assert not marker.exists()


def test_a_pickle_without_the_checkpoints_keys_is_one_line(tiny, tmp_path):
    d = tmp_path / "r"
    train_tiny(tiny, d)
    rundir.write_status(d, "interrupted")
    torch.save({"weights": torch.zeros(2)}, d / "checkpoint.pt")
    with pytest.raises(rundir.RunDirError, match="not a checkpoint of this suite .no model, optimizer, rng, iteration"):
        train_tiny(tiny, d, resume=True)


def test_weights_that_would_run_code_are_refused_in_one_line_by_finetune_and_predictions(tiny, tmp_path, capsys):
    from resnet_repro import models

    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(marker)}, evil)
    with pytest.raises(ValueError) as e:
        models.pretrained_state_dict("resnet20", str(evil))
    assert "\n" not in str(e.value) and "weights_only=False" not in str(e.value) and not marker.exists()
    d = tmp_path / "e" / "r"
    train_tiny(tiny, d)
    torch.save({"model": RunsCode(marker), "config": {}}, d / "final.pt")
    with pytest.raises(SystemExit) as exit_:
        inspection.predictions_main([str(d), "--out", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "weights_only=False" not in err and not marker.exists()


# bad values, checked before training and named


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--set", "weight_decay=-1"], "weight_decay must not be negative"),
        (["--set", "lr=1e308"], "lr and warmup_lr must be at most 3.4e+38"),
        (["--set", "lr=inf"], "lr must be a finite number, not inf"),
        (["--set", "momentum=nan"], "momentum must be a finite number, not nan"),
        (["--set", "warmup_until_err=nan"], "warmup_until_err must be a finite number, not nan"),
        (["--iterations", str(10**20)], "iterations must be at most 1,000,000,000"),
    ],
)
def test_bad_values_exit_2_naming_the_key(tmp_path, tiny_dir, argv, match, capsys):
    assert cli(experiment(tmp_path, tiny_dir), "--out", tmp_path / "res", *argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "res").exists()


def test_negative_workers_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        run.parse_args(["imagenet18_34", "--workers", "-1"])
    assert e.value.code == 2 and "--workers must be 0" in capsys.readouterr().err


# where runs go


@pytest.mark.parametrize("jobs", ["1", "2"])  # in this process, and the parent of child processes
def test_an_out_that_cannot_be_written_is_one_line(tmp_path, tiny_dir, monkeypatch, capsys, jobs):
    out = tmp_path / "readonly"
    real = Path.mkdir

    def mkdir(self, *a, **k):  # as a read-only filesystem answers (root ignores chmod, so it is simulated)
        if str(self).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert run.main([str(experiment(tmp_path, tiny_dir)), "--out", str(out), "--no-progress", "--jobs", jobs]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Read-only file system" in err and "--out elsewhere" in err


def test_temporary_files_of_a_killed_write_are_removed_when_the_run_is_next_opened(tiny, tmp_path):
    d = tmp_path / "r"
    train_tiny(tiny, d)
    rundir.write_status(d, "interrupted")
    left = [d / "checkpoint.pt.4242.tmp", d / "final.pt.4242.tmp", d / "status.json.4242.tmp"]
    for path in left:
        path.write_bytes(b"half a file")  # as SIGKILL leaves them mid-write
    assert train_tiny(tiny, d, resume=True).state == "done"
    assert not list(d.glob("*.tmp"))


def test_the_same_data_under_another_path_skips_and_resumes(tmp_path, tiny_dir, capsys):
    exp = experiment(tmp_path, tiny_dir)
    assert cli(exp, "--out", tmp_path / "res") == 0
    copy = tmp_path / "moved" / "tiny"
    copy.parent.mkdir()
    copy.symlink_to(tiny_dir)  # the same images, under another path
    capsys.readouterr()
    assert cli(exp, "--out", tmp_path / "res", "--data", copy) == 0
    assert capsys.readouterr().out.count("| skipped |") == 2
    rundir.write_status(tmp_path / "res" / "pair" / "resnet8", "interrupted")
    assert cli(exp, "--out", tmp_path / "res", "--data", copy, "--resume") == 0


def test_analysis_reads_the_rows_before_a_cut_off_line_and_says_so(tiny, tmp_path):
    d = tmp_path / "e" / "r"
    train_tiny(tiny, d)
    with open(d / "metrics.csv", "a") as f:
        f.write("e,r,resnet8,8,True,3,6,0.1")  # a row killed mid-write
    with pytest.warns(UserWarning, match="cut off .* read the 3 rows before it"):
        df = analysis.load_runs(d)
    assert len(df) == 3


def test_compare_without_out_never_overwrites_the_figure_of_other_folders():
    committed = Path("figures/compare/cpu-demo-degradation-quick-vs-cpu-8k-degradation.png")
    assert analysis.compare_path(["results/cpu-demo/degradation-quick", "results/cpu-8k/degradation"]) == committed
    assert analysis.compare_path(["/tmp/mine/degradation-quick"]) != committed
    assert analysis.compare_path(["results/a", "results/b"]) == Path("figures/compare/a-vs-b.png")


# results the user did not name are never deleted or mixed


@pytest.mark.parametrize("name", ["..", "", "a/b", ".hidden", "-x"])
def test_run_names_that_are_not_plain_folder_names_are_refused(tmp_path, tiny_dir, name, capsys):
    (tmp_path / "res" / "keep.txt").parent.mkdir()
    (tmp_path / "res" / "keep.txt").write_text("another experiment's results")
    path = tmp_path / "bad.toml"
    path.write_text(f'runs = ["{name}"]\n[train]\ndata = "{tiny_dir}"\nbatch_size = 16\niterations = 2\n')
    assert cli(path, "--out", tmp_path / "res", "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a plain name" in err
    assert [p.name for p in (tmp_path / "res").iterdir()] == ["keep.txt"]


def test_overwrite_deletes_the_runs_own_files_only(tiny, tmp_path):
    d = tmp_path / "e" / "r"
    train_tiny(tiny, d)
    (d / "notes.txt").write_text("mine")
    (d / "plots").mkdir()
    assert train_tiny(tiny, d, overwrite=True).state == "done"
    assert (d / "notes.txt").read_text() == "mine" and (d / "plots").is_dir()


@pytest.mark.parametrize("left", ["checkpoint.pt", "metrics.csv"])
def test_an_unfinished_run_without_config_json_is_never_trained_over(tiny, tmp_path, monkeypatch, left):
    from conftest import interrupt_at

    d = tmp_path / "e" / "r"
    interrupt_at(monkeypatch, 5)  # after two rows (2 steps an epoch)
    with pytest.raises(rundir.Interrupted):
        train_tiny(tiny, d)
    monkeypatch.undo()
    (d / "config.json").unlink()
    if left == "metrics.csv":
        (d / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != "lock"}
    for resume in (False, True):
        with pytest.raises(rundir.RunDirError, match="no config.json .* --overwrite"):
            train_run(spec(lr=0.2), tiny, d, experiment="e", run="r", resume=resume)
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name not in ("lock", "status.json")}
    assert after == {k: v for k, v in before.items() if k != "status.json"}


def test_resume_refuses_another_runs_checkpoint_and_a_csv_cut_short(tiny, tmp_path, monkeypatch):
    from conftest import interrupt_at

    mine, other = tmp_path / "e" / "r", tmp_path / "e2" / "r"
    for d, lr in ((mine, 0.1), (other, 0.5)):
        interrupt_at(monkeypatch, 5)
        with pytest.raises(rundir.Interrupted):
            train_run(spec(lr=lr), tiny, d, experiment="e", run="r")
        monkeypatch.undo()
    own = (mine / "checkpoint.pt").read_bytes()
    (mine / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    with pytest.raises(rundir.RunDirError, match=r"checkpoint.pt is not this run's \(lr: 0.1 -> 0.5\)"):
        train_run(spec(), tiny, mine, experiment="e", run="r", resume=True)
    (mine / "checkpoint.pt").write_bytes(own)
    rows = (mine / "metrics.csv").read_text().splitlines(keepends=True)
    (mine / "metrics.csv").write_text("".join(rows[:2]))  # its last row deleted by hand
    with pytest.raises(rundir.RunDirError, match="has 1 rows, but checkpoint.pt was written after 2"):
        train_run(spec(), tiny, mine, experiment="e", run="r", resume=True)
    (mine / "metrics.csv").unlink()
    with pytest.raises(rundir.RunDirError, match="has 0 rows"):
        train_run(spec(), tiny, mine, experiment="e", run="r", resume=True)
    (mine / "metrics.csv").write_text("".join(rows))
    assert train_run(spec(), tiny, mine, experiment="e", run="r", resume=True).state == "done"


def test_a_figure_cut_short_never_replaces_the_previous_one(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    files.save_figure(fig, tmp_path / "fig6.png", dpi=50)
    good = (tmp_path / "fig6.png").read_bytes()
    real = Figure.savefig

    def killed(self, target, **kwargs):
        real(self, target, **kwargs)
        raise KeyboardInterrupt  # stopped after drawing, before the file is in place

    monkeypatch.setattr(Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        files.save_figure(fig, tmp_path / "fig6.png", dpi=80)
    assert (tmp_path / "fig6.png").read_bytes() == good and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("command", [["evaluate", "final.pt"], ["predictions", "."], []])
def test_an_unknown_device_is_one_line_for_analysis_commands(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "final.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        analysis.main([*command, "--device", "foo"])
    err = capsys.readouterr().err
    assert (
        e.value.code == 2
        and err
        == "error: --device foo: foo is not a device; use cpu, cuda, cuda:1, ... or a comma-separated list of them\n"
    )


def test_a_net_of_absurd_depth_is_refused_at_once():
    with pytest.raises(ValueError, match="at most 6,002"):
        models_parse("resnet999998")
    assert models_parse("resnet6002") == ("resnet", 6002)


def crafted_weights(path, kind):
    from resnet_repro.models import build_model

    if kind == "a list":
        torch.save([1, 2, 3], path)
    elif kind == "another net":
        torch.save(build_model("resnet8", 10).state_dict(), path)
    else:  # a config without `model`
        torch.save({"model": build_model("resnet20", 10).state_dict(), "config": {"num_classes": 10}}, path)
    return path


@pytest.mark.parametrize(
    "kind,match",
    [
        ("a list", "holds a list, not a state dict"),
        ("another net", "do not fit"),
        ("no model", "its config names no model"),
    ],
)
def test_weights_that_cannot_be_used_are_one_line_for_evaluate_and_finetune(kind, match, tmp_path, capsys):
    from resnet_repro import finetune

    path = str(crafted_weights(tmp_path / "w.pt", kind))
    commands = (
        lambda: analysis.main(["evaluate", path, "--model", "resnet20", "--data", "mini", "--normalize", "pixel-mean"]),
        lambda: finetune.main(
            ["--model", "resnet20", "--weights", path, "--data", "mini", "--out", str(tmp_path / "ft")]
        ),
    )
    for command in commands:
        with pytest.raises(SystemExit) as e:
            command()
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "ft").exists()  # refused before any run directory was made


@pytest.mark.slow
def test_a_c_locale_still_prints_and_writes_utf8(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    root = ROOT
    argv = [sys.executable, "-m", "resnet_repro.analysis", "results/cpu-demo", "--out", str(tmp_path), "--no-fig7"]
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-500:]
    assert "±" in (tmp_path / "quick" / "summary.md").read_text(encoding="utf-8")


def test_a_loss_or_error_that_is_not_finite_is_named(tmp_path):
    write_run(tmp_path, "resnet20")
    path = tmp_path / "degradation" / "resnet20" / "metrics.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[2].split(",")
    fields[header.index("test_err")] = "inf"
    path.write_text("\n".join([*lines[:2], ",".join(fields), *lines[3:]]) + "\n")
    with pytest.warns(UserWarning, match=r"metrics.csv: a loss or error that is not a finite number at line\(s\) 3"):
        rows = metrics_rows(path)
    assert len(rows) == 4


def test_figures_that_could_not_be_written_are_said_before_training(tmp_path, tiny_dir, monkeypatch, capsys):
    figures = tmp_path / "figs"
    real = Path.mkdir

    def mkdir(self, *a, **k):  # a read-only or full filesystem where the figures go (simulated: root ignores chmod)
        if str(self).startswith(str(figures)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    argv = [
        str(experiment(tmp_path, tiny_dir)),
        "--out",
        str(tmp_path / "res"),
        "--figures",
        str(figures),
        "--no-progress",
    ]
    assert run.main([*argv, "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write figures to {figures}: Read-only file system" in err
    assert not list((tmp_path / "res").rglob("metrics.csv"))  # nothing trained


@pytest.mark.parametrize("command", ["draw", "compare"])
def test_analysis_on_a_full_disk_is_one_line_and_keeps_the_previous_files(command, tmp_path, monkeypatch, capsys):
    for run_name in ("plain20", "resnet20"):
        write_run(tmp_path / "res", run_name)
    out = tmp_path / "figs" if command == "draw" else tmp_path / "figs" / "c.png"
    argv = [str(tmp_path / "res"), "--out", str(out)]
    argv = [*argv, "--no-fig7"] if command == "draw" else ["compare", str(tmp_path / "res"), *argv]
    assert analysis.main(argv) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "figs").rglob("*") if p.is_file()}

    def full(path, write):
        raise files.DiskFull(f"disk full while writing {path}; the previous {Path(path).name} is intact.")

    monkeypatch.setattr(files, "write_atomic", full)
    with pytest.raises(SystemExit) as e:
        analysis.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "disk full" in err
    assert {p: p.read_bytes() for p in (tmp_path / "figs").rglob("*") if p.is_file()} == before
