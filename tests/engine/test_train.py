import json
import math
import shutil
import signal

import pytest
import torch

from conftest import FIXTURES, TIMING, csv_rows, interrupt_at, train_run, write_image_folder, write_tar_gz
from resnet_repro.config import TrainSpec
from resnet_repro.data import memory
from resnet_repro.engine import metrics, recipe, rundir, train
from resnet_repro.models import build_model, num_params

VARYING = (*TIMING, "run")  # and the run name, which differs between the two directories


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_image_folder(root, n_train=48, n_test=12)
    return memory.load(str(root))


def spec(**kw):
    base = dict(model="resnet8", data="tiny", batch_size=16, iterations=10, milestones=(5, 8), eval_batch_size=8)
    return TrainSpec(**{**base, **kw})


def run(s, ds, run_dir, **kw):
    return train_run(s, ds, run_dir, **kw)


def rows(run_dir):
    return csv_rows(run_dir / "metrics.csv")


def test_lr_schedule_is_a_pure_function_of_the_iteration():
    s = TrainSpec(lr=0.1, milestones=(32000, 48000))
    assert [recipe.lr_at(i, s) for i in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    w = TrainSpec(lr=0.1, milestones=(32000, 48000), warmup_lr=0.01)
    assert recipe.lr_at(100, w, None) == 0.01 and recipe.lr_at(399, w, 400) == 0.01 and recipe.lr_at(400, w, 400) == 0.1


def test_a_run_writes_its_csv_config_status_and_final_weights(tiny, tmp_path):
    result = run(spec(), tiny, tmp_path / "resnet8")
    d = tmp_path / "resnet8"
    r = rows(d)
    with open(d / "metrics.csv") as f:
        assert f.readline().strip().split(",") == list(metrics.COLUMNS)
    assert [int(x["epoch"]) for x in r] == [1, 2, 3, 4] and [int(x["iteration"]) for x in r] == [3, 6, 9, 10]
    assert [float(x["lr"]) for x in r] == pytest.approx([0.1, 0.01, 0.001, 0.001])
    assert {x["experiment"] for x in r} == {"exp"} and r[0]["residual"] == "True" and r[0]["depth"] == "8"
    for x in r:
        assert (
            0 <= float(x["train_err"]) <= 100 and 0 <= float(x["test_err"]) <= 100 and float(x["images_per_second"]) > 0
        )
    config = json.loads((d / "config.json").read_text())
    assert (
        config["model"] == "resnet8"
        and config["seed"] == 0
        and config["params"] == num_params(build_model("resnet8", 3))
    )
    assert config["dataset"] == tiny.name and config["dataset_checksum"] == tiny.checksum and config["shortcut"] == "A"
    assert {"torch", "device", "commit", "milestones"} <= set(config)
    assert json.loads((d / "status.json").read_text())["state"] == "done"
    final = torch.load(d / "final.pt", weights_only=False)
    build_model("resnet8", 3).load_state_dict(final["model"], strict=True)
    assert result == train.Outcome("done")


def test_training_reduces_the_loss(tiny, tmp_path):
    assert run(spec(iterations=30, milestones=(), lr=0.05), tiny, tmp_path / "p").state == "done"
    r = rows(tmp_path / "p")
    assert float(r[-1]["train_loss"]) < float(r[0]["train_loss"])


def test_existing_run_is_never_silently_overwritten(tiny, tmp_path):
    d = tmp_path / "r"
    run(spec(), tiny, d)
    before = (d / "metrics.csv").read_text()
    assert run(spec(), tiny, d).state == "skipped" and run(spec(), tiny, d, resume=True).state == "skipped"
    assert (d / "metrics.csv").read_text() == before  # finished: nothing redone, nothing rewritten
    rundir.write_status(d, "interrupted")
    with pytest.raises(rundir.RunDirError, match="--resume .* --overwrite"):
        run(spec(), tiny, d)
    rundir.write_status(d, "done")
    with pytest.raises(rundir.RunDirError, match=r"different config \(lr: 0.1 -> 0.2\)"):
        run(spec(lr=0.2), tiny, d, resume=True)
    assert run(spec(lr=0.2), tiny, d, overwrite=True).state == "done"
    assert json.loads((d / "config.json").read_text())["lr"] == 0.2


@pytest.fixture(scope="module")
def whole(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("whole") / "whole"
    run(spec(), tiny, d, deterministic=True)
    return d


@pytest.mark.parametrize(  # mid-epoch, the last step of an epoch, another epoch; Ctrl-C or a scheduler's SIGTERM
    "stop_at,sig", [(2, signal.SIGINT), (3, signal.SIGINT), (7, signal.SIGINT), (5, signal.SIGTERM)]
)
def test_a_signal_checkpoints_and_resume_is_exact(tiny, whole, tmp_path, monkeypatch, stop_at, sig):
    broken = tmp_path / "broken"
    interrupt_at(monkeypatch, stop_at, sig)
    with pytest.raises(rundir.Interrupted, match=f"{sig.name} at iteration {stop_at}; checkpoint written"):
        run(spec(), tiny, broken, deterministic=True)
    assert json.loads((broken / "status.json").read_text())["state"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.undo()
    run(spec(), tiny, broken, resume=True, deterministic=True)
    assert csv_rows(broken / "metrics.csv", drop=VARYING) == csv_rows(whole / "metrics.csv", drop=VARYING)
    a, b = torch.load(whole / "final.pt")["model"], torch.load(broken / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_runs_bar_starts_where_it_stopped(tiny, tmp_path, monkeypatch):
    """Its rate and time left count the steps trained since the resume, not the earlier ones in its first second."""
    interrupt_at(monkeypatch, 7)
    with pytest.raises(rundir.Interrupted):
        run(spec(), tiny, tmp_path / "r")
    monkeypatch.undo()
    stopped = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["iteration"]
    bars = []

    class Recorded(train.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(train, "tqdm", Recorded)
    run(spec(), tiny, tmp_path / "r", resume=True, progress=True)
    (bar,) = bars
    assert 0 < stopped < 10 and (bar.initial, bar.n) == (stopped, 10)


def test_without_a_bar_the_output_says_each_row(tiny, tmp_path, capsys):
    """A child of --jobs or a Slurm job has no bar: its log (output.log, the job's) shows how the run goes."""
    run(spec(), tiny, tmp_path / "quiet")
    said = [line for line in capsys.readouterr().out.splitlines() if ": row " in line]
    r = rows(tmp_path / "quiet")
    assert len(said) == len(r) == 4
    assert said[0].startswith(
        f"quiet: row 1, iteration 3 of 10: train err {float(r[0]['train_err']):.2f}%, "
        f"test err {float(r[0]['test_err']):.2f}%, "
    ) and said[0].endswith(" images/s")
    run(spec(), tiny, tmp_path / "shown", progress=True)
    assert ": row " not in capsys.readouterr().out  # the bar shows the last row instead


def test_rows_newer_than_the_checkpoint_are_dropped_on_resume(tiny, tmp_path):
    d = tmp_path / "r"
    interrupt_at_epoch_end = spec(iterations=6, milestones=())
    run(interrupt_at_epoch_end, tiny, d)
    # Simulate a kill between writing epoch 2's row and its checkpoint: roll the checkpoint back.
    state = torch.load(d / "checkpoint.pt", weights_only=False)
    assert state["csv_rows"] == 2
    rundir.write_status(d, "interrupted")
    (d / "final.pt").unlink()
    whole = rows(d)
    # An extra, stale row beyond the checkpoint must go, not be duplicated.
    with open(d / "metrics.csv", "a") as f:
        f.write(",".join(["stale"] * len(metrics.COLUMNS)) + "\n")
    run(spec(iterations=6, milestones=()), tiny, d, resume=True)
    assert [r["epoch"] for r in rows(d)] == [r["epoch"] for r in whole]


def test_non_finite_loss_fails_the_run_naming_iteration_and_lr(tiny, tmp_path):
    d = tmp_path / "nan"
    result = run(spec(lr=1e30, milestones=()), tiny, d)
    assert result.state == "failed"
    assert "non-finite loss at iteration" in result.message and "lr 1e+30" in result.message
    status = json.loads((d / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite" in status["message"]
    assert not (d / "final.pt").exists()


def test_warmup_holds_the_low_lr_until_the_error_falls(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "WARMUP_CHECK", 3)
    d = tmp_path / "w"
    run(spec(iterations=12, milestones=(), warmup_lr=0.01, warmup_until_err=101.0), tiny, d)
    # Ended at the first check (iteration 3): the first epoch's last step still ran at the warm-up lr.
    assert [float(r["lr"]) for r in rows(d)] == pytest.approx([0.01, 0.1, 0.1, 0.1])
    d2 = tmp_path / "w2"
    run(spec(iterations=12, milestones=(), warmup_lr=0.01, warmup_until_err=0.0), tiny, d2)
    assert [float(r["lr"]) for r in rows(d2)] == pytest.approx([0.01] * 4)  # never ended


def test_the_plateau_rule_falls_after_patience_stalled_rows_and_starts_over():
    s = TrainSpec(schedule="plateau", plateau_patience=2, plateau_delta=0.5, plateau_drops=1)
    state, falls = (math.inf, 0), []
    for err in (50.0, 40.0, 39.8, 39.7, 30.0):  # 39.8 and 39.7 are not 0.5 below 40: stalled twice
        *state, fell = recipe.plateau_fell(s, err, *state, falls)
        falls += [err] if fell else []
        if fell:
            assert state == [math.inf, 0]  # the watch starts over after a fall
    assert falls == [39.7]
    assert recipe.plateau_fell(s, 99.0, 10.0, 5, [6]) == (10.0, 5, False)  # plateau_drops reached: no more falls
    assert [recipe.lr_at(i, s, None, [6, 12]) for i in (5, 6, 11, 12)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


@pytest.mark.parametrize("drops,lrs", [(3, [0.1, 0.1, 0.01, 0.01, 0.001]), (1, [0.1, 0.1, 0.01, 0.01, 0.01])])
def test_a_plateau_run_lowers_its_lr_when_the_watched_error_stalls(tiny, tmp_path, capsys, drops, lrs):
    # a delta no error can beat: the first row sets the lowest, the next one stalls, patience 1 lets the lr fall
    s = spec(iterations=15, schedule="plateau", plateau_patience=1, plateau_delta=1000.0, plateau_drops=drops)
    run(s, tiny, tmp_path / "p")
    assert [float(r["lr"]) for r in rows(tmp_path / "p")] == pytest.approx(lrs)
    assert "lr 0.1 -> 0.01 from iteration 6: train_err" in capsys.readouterr().out


def test_a_plateau_run_resumes_exactly(tiny, tmp_path, monkeypatch):
    s = spec(iterations=15, schedule="plateau", plateau_on="test_err", plateau_patience=1, plateau_delta=1000.0)
    run(s, tiny, tmp_path / "whole", deterministic=True)
    interrupt_at(monkeypatch, 8)  # after the first fall (iteration 6)
    with pytest.raises(rundir.Interrupted):
        run(s, tiny, tmp_path / "broken", deterministic=True)
    assert torch.load(tmp_path / "broken/checkpoint.pt")["lr_drops"] == [6]
    monkeypatch.undo()
    run(s, tiny, tmp_path / "broken", resume=True, deterministic=True)
    whole, broken = (csv_rows(tmp_path / d / "metrics.csv", drop=VARYING) for d in ("whole", "broken"))
    assert whole == broken and [float(r["lr"]) for r in whole] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    with rundir.RunLock(tmp_path):
        with pytest.raises(rundir.RunDirError, match="in use by another process"):
            with rundir.RunLock(tmp_path):
                pass


def test_linear_schedule_with_a_ramp():
    s = TrainSpec(lr=0.1, iterations=600, schedule="linear", ramp=120)
    assert [recipe.lr_at(i, s) for i in (0, 59, 119, 120, 360, 599)] == pytest.approx(
        [0.1 / 120, 0.05, 0.1, 0.1, 0.05, 0.1 / 480]
    )
    step = TrainSpec(lr=0.1, iterations=100, milestones=(50,), ramp=10)
    assert [recipe.lr_at(i, step) for i in (4, 9, 49, 50)] == pytest.approx([0.05, 0.1, 0.1, 0.01])


def test_log_every_writes_a_row_every_n_iterations_and_one_at_the_end(tiny, tmp_path):
    run(spec(log_every=4), tiny, tmp_path / "r")  # 48 images, batch 16: 3 iterations an epoch
    r = rows(tmp_path / "r")
    assert [int(x["iteration"]) for x in r] == [4, 8, 10]
    assert [float(x["epoch"]) for x in r] == pytest.approx([4 / 3, 8 / 3, 10 / 3], abs=1e-3)  # epochs elapsed
    assert [float(x["lr"]) for x in r] == pytest.approx([0.1, 0.01, 0.001])


@pytest.fixture(scope="module")
def whole_logged(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("whole") / "whole"
    run(spec(log_every=4), tiny, d, deterministic=True)
    return d


@pytest.mark.parametrize("stop_at", [3, 4, 6])  # an epoch's end between rows, a row's step, mid-interval and mid-epoch
def test_log_every_resume_is_exact(tiny, whole_logged, tmp_path, monkeypatch, stop_at):
    broken = tmp_path / "broken"
    interrupt_at(monkeypatch, stop_at)
    with pytest.raises(rundir.Interrupted, match=f"at iteration {stop_at};"):
        run(spec(log_every=4), tiny, broken, deterministic=True)
    monkeypatch.undo()
    run(spec(log_every=4), tiny, broken, resume=True, deterministic=True)
    assert csv_rows(broken / "metrics.csv", drop=VARYING) == csv_rows(whole_logged / "metrics.csv", drop=VARYING)


def test_a_run_interrupted_by_the_code_of_the_first_cpu_campaign_resumes(tmp_path, whole):
    """tests/fixtures/run-b432720: a run stopped by SIGINT at iteration 5 (mid-epoch) by commit b432720, whose
    checkpoints predate log_every; campaign runs started then must still resume."""
    root = tmp_path / "data"
    write_image_folder(root, n_train=48, n_test=12)  # the same images the fixture trained on
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / "run-b432720", old)
    run(spec(), memory.load(str(root)), old, resume=True, deterministic=True)
    assert csv_rows(old / "metrics.csv", drop=VARYING) == csv_rows(whole / "metrics.csv", drop=VARYING)


def test_a_run_interrupted_by_the_code_before_the_subpackages_resumes(tmp_path, whole):
    """tests/fixtures/run-b0c555f: a run stopped by SIGINT at iteration 5 by commit b0c555f, the last code with flat
    modules (resnet_repro.memory, .train, ...): checkpoints written then must resume under the subpackages."""
    root = tmp_path / "data"
    write_image_folder(root, n_train=48, n_test=12)
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / "run-b0c555f", old)
    assert run(spec(), memory.load(str(root)), old, resume=True, deterministic=True).state == "done"
    assert csv_rows(old / "metrics.csv", drop=VARYING) == csv_rows(whole / "metrics.csv", drop=VARYING)


def test_a_run_started_from_a_folder_resumes_and_is_skipped_from_a_tar_gz_of_it(tmp_path, monkeypatch, whole):
    root = tmp_path / "images"
    write_image_folder(root, n_train=48, n_test=12)  # the images `whole` trained on
    archive = write_tar_gz(root, tmp_path / "images.tar.gz", arcname="images")
    d = tmp_path / "r"
    interrupt_at(monkeypatch, 5)
    with pytest.raises(rundir.Interrupted):
        run(spec(data=str(root)), memory.load(str(root)), d, deterministic=True)
    monkeypatch.undo()
    packed = memory.load(str(archive), data_dir=tmp_path / "cache")
    assert run(spec(data=str(archive)), packed, d, resume=True, deterministic=True).state == "done"
    assert csv_rows(d / "metrics.csv", drop=VARYING) == csv_rows(whole / "metrics.csv", drop=VARYING)
    assert run(spec(data=str(root)), memory.load(str(root)), d).state == "skipped"
    assert run(spec(data=str(archive)), packed, d).state == "skipped"


def test_a_resume_under_another_thread_count_is_said_and_recorded(tiny, tmp_path, monkeypatch, capsys):
    threads, d = torch.get_num_threads(), tmp_path / "r"
    try:
        torch.set_num_threads(1)
        interrupt_at(monkeypatch, 5)
        with pytest.raises(rundir.Interrupted):
            run(spec(), tiny, d)
        monkeypatch.undo()
        torch.set_num_threads(2)
        assert run(spec(), tiny, d, resume=True).state == "done"
    finally:
        torch.set_num_threads(threads)
    config = json.loads((d / "config.json").read_text())
    assert config["threads"] == 1 and [(r["iteration"], r["threads"]) for r in config["resumed"]] == [(5, 2)]
    out = capsys.readouterr()
    assert "resuming with 2 CPU thread(s) where it ran with 1: not bitwise the same" in out.out + out.err


def test_threads_asked_for_while_a_run_trains_are_taken_at_its_next_row_and_recorded(
    tiny, tmp_path, monkeypatch, capsys
):
    """run --jobs hands a child the threads of a run that ended beside it (devices.ask_threads); a resume with
    those threads is then no change of thread count, and one with the threads it started with is."""
    from resnet_repro.engine import devices

    threads, d = torch.get_num_threads(), tmp_path / "r"
    try:
        torch.set_num_threads(1)
        devices.ask_threads(3)
        devices.ask_threads(2)  # the latest counts
        interrupt_at(monkeypatch, 7)
        with pytest.raises(rundir.Interrupted):
            run(spec(), tiny, d)
        assert torch.get_num_threads() == 2 and devices.threads_asked() is None
        monkeypatch.undo()
        config = json.loads((d / "config.json").read_text())
        assert config["threads"] == 1 and config["threads_changed"] == [{"iteration": 3, "threads": 2}]  # row 1
        out = capsys.readouterr()
        assert "r: 2 CPU threads from iteration 3 on (a run beside it ended)" in out.out + out.err
        assert rundir.last_threads(config) == 2
        assert run(spec(), tiny, d, resume=True).state == "done"  # on 2 threads, as it last trained
        out = capsys.readouterr()
        assert "CPU thread(s) where it ran with" not in out.out + out.err
    finally:
        torch.set_num_threads(threads)
    assert rundir.last_threads(json.loads((d / "config.json").read_text())) == 2
    later = {
        "threads": 1,
        "resumed": [{"iteration": 9, "threads": 1}],
        "threads_changed": [{"iteration": 3, "threads": 2}],
    }
    assert rundir.last_threads(later) == 1  # the latest by iteration
