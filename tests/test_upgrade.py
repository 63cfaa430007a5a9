"""tools/upgrade_results.py: runs written before the weights carried their mean, with the training machine's
paths, still skip, resume, evaluate and draw once upgraded; and the committed runs are upgraded."""

import json
import shutil

import pytest
import torch

from conftest import ROOT, TIMING, csv_rows, interrupt_at, load_tool, train_run, write_image_folder, write_tar_gz
from resnet_repro import files
from resnet_repro.analysis import evaluation, inspection, results
from resnet_repro.config import TrainSpec
from resnet_repro.data import memory
from resnet_repro.engine import rundir

upgrade_results = load_tool("upgrade_results")


def spec(data_path):
    return TrainSpec(
        model="resnet8", data=str(data_path), batch_size=16, iterations=10, milestones=(5, 8), eval_batch_size=8
    )


def as_old_code_left_it(run_dir, outside):
    """What earlier versions left: final.pt without the mean, measures.json keyed by that file, a log naming
    the machine's absolute results path."""
    final = run_dir / "final.pt"
    if final.exists():
        saved = files.load_tensors(final)
        del saved["mean"]
        files.save(saved, final)
        inspection.cached(run_dir, "test-data", "cpu", "test", lambda: {"test_err": 1.0})
    (run_dir / "output.log").write_text(
        f"exp: 1 runs (r), 10 iterations of batch 16, on cpu -> {outside}/results/exp/\n"
    )


def test_old_runs_with_machine_paths_skip_resume_evaluate_and_draw_once_upgraded(tmp_path, monkeypatch):
    outside, repo = tmp_path / "machine", tmp_path / "repo"
    write_image_folder(outside / "images", n_train=48, n_test=12)
    archive = write_tar_gz(outside / "images", outside / "images.tar.gz", arcname="images")
    ds = memory.load(str(archive), data_dir=outside / "cache")
    done, stopped = repo / "results" / "exp" / "done", repo / "results" / "exp" / "stopped"
    old = dict(data_dir=str(outside / "cache"), deterministic=True)
    assert train_run(spec(archive), ds, done, **old).state == "done"
    interrupt_at(monkeypatch, 5)
    with pytest.raises(rundir.Interrupted):
        train_run(spec(archive), ds, stopped, **old)
    monkeypatch.undo()
    for run_dir in (done, stopped):
        as_old_code_left_it(run_dir, outside)

    (repo / "data").mkdir()
    shutil.copy(archive, repo / "data" / "images.tar.gz")
    shutil.rmtree(outside)  # the training machine is gone: only the repository is left
    monkeypatch.chdir(repo)
    assert upgrade_results.main(["results", "--data", "data/images.tar.gz"]) == 0

    for run_dir in (done, stopped):
        config = json.loads((run_dir / "config.json").read_text())
        assert (config["data"], config["data_dir"]) == ("data/images.tar.gz", "data")
        assert str(outside) not in (run_dir / "output.log").read_text()
    final = files.load_tensors(done / "final.pt")
    local = memory.load("data/images.tar.gz", data_dir="data")
    assert torch.equal(final["mean"], local.mean) and final["config"]["data"] == "data/images.tar.gz"
    assert files.load_tensors(stopped / "checkpoint.pt")["config"]["data_dir"] == "data"
    store = json.loads((done / "measures.json").read_text())
    assert store["weights_md5"] == files.md5_file(done / "final.pt") and store["measures"]  # still valid

    assert train_run(spec("data/images.tar.gz"), local, done).state == "skipped"
    assert train_run(spec("data/images.tar.gz"), local, stopped, resume=True, deterministic=True).state == "done"
    rows = csv_rows(done / "metrics.csv", drop=(*TIMING, "run"))
    assert csv_rows(stopped / "metrics.csv", drop=(*TIMING, "run")) == rows  # as if never stopped
    row, _ = evaluation.evaluate_weights(done / "final.pt", "data/images.tar.gz")
    assert row["normalize"] == "run" and row["test_err"] == pytest.approx(float(rows[-1]["test_err"]), abs=1e-4)
    frame = results.load_runs("results")
    assert set(frame.run) == {"done", "stopped"} and set(frame.state) == {"done"}
    assert upgrade_results.main(["results", "--data", "data/images.tar.gz"]) == 0  # a second pass changes nothing
    assert upgrade_results.upgrade(done, "data/images.tar.gz") == []


def test_the_committed_runs_are_upgraded():
    finals = sorted((ROOT / "results").rglob("final.pt"))
    assert len(finals) >= 6
    for path in finals:
        saved = files.load_tensors(path)
        assert saved["mean"].shape == (3, 32, 32) and 0 < float(saved["mean"].mean()) < 1, path
        config = json.loads((path.parent / "config.json").read_text())
        assert saved["config"]["data"] == config["data"] and not upgrade_results.leaves_repository(config["data"])
        measures = path.parent / "measures.json"
        if measures.exists():
            assert json.loads(measures.read_text())["weights_md5"] == files.md5_file(path), path
