import csv
import errno
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, fixed_model, train_run, write_image_folder
from resnet_repro import files, models
from resnet_repro.analysis import cli, evaluation, inspection
from resnet_repro.analysis.evaluation import WeightsError, evaluate_weights
from resnet_repro.config import TrainSpec
from resnet_repro.data import memory
from resnet_repro.engine import metrics


def train_tiny(root):
    """A finished tiny run (resnet8, 3 classes, 10 iterations) on its own ImageFolder under root: its directory."""
    write_image_folder(root / "images", n_train=48, n_test=12)
    spec = TrainSpec(
        model="resnet8", data=str(root / "images"), batch_size=16, iterations=10, milestones=(5, 8), eval_batch_size=8
    )
    train_run(spec, memory.load(spec.data), root / "exp" / "resnet8", experiment="exp", run="resnet8")
    return root / "exp" / "resnet8"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def run_dir(tiny_run, tmp_path):
    """A copy of the tiny run, free to change (its config still names the module's test images)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def counting(monkeypatch, module, name):
    """Count the calls of module.name (still calling it)."""
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def perturb(final_pt):
    final = torch.load(final_pt, weights_only=True)
    final["model"]["fc.bias"] += torch.tensor([3.0, 0.0, -3.0])
    torch.save(final, final_pt)


def test_evaluate_reproduces_the_runs_last_test_error(run_dir, tmp_path, capsys):
    last = metrics.read_metrics(run_dir / "metrics.csv")[-1]
    row, line = evaluate_weights(run_dir / "final.pt")
    assert row["test_err"] == pytest.approx(last["test_err"], abs=1e-3) and row["run_last_test_err"] == last["test_err"]
    assert row["test_loss"] == pytest.approx(last["test_loss"], abs=1e-4)
    assert row["test_images"] == 12 and row["normalize"] == "run" and row["model"] == "resnet8"
    assert f"test error {last['test_err']:.2f}%" in line and "per-pixel mean of images (the run's)" in line
    out = tmp_path / "evaluations.csv"
    for _ in range(2):
        assert cli.main(["evaluate", str(run_dir / "final.pt"), "--csv", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[1]["test_err"]) == pytest.approx(row["test_err"])
    assert "read from measures.json" in capsys.readouterr().out.splitlines()[1]


def test_evaluate_of_a_run_is_a_read_the_second_time_and_recomputed_for_new_weights(run_dir, monkeypatch):
    calls = counting(monkeypatch, evaluation, "evaluate")
    first, _ = evaluate_weights(run_dir / "final.pt")
    second, line = evaluate_weights(run_dir / "final.pt")
    assert len(calls) == 1 and second == first and "read from measures.json" in line
    perturb(run_dir / "final.pt")
    third, line = evaluate_weights(run_dir / "final.pt")
    assert len(calls) == 2 and third["test_loss"] != first["test_loss"] and "read from" not in line


def test_fig7_responses_are_kept_and_recomputed_when_the_weights_or_the_data_change(tmp_path, monkeypatch):
    run = train_tiny(tmp_path)
    calls = counting(monkeypatch, inspection, "layer_response_std")
    first = inspection.run_response_std(run, "cpu")
    assert len(calls) == 1 and (run / inspection.MEASURES).exists()
    assert list(first.index) == models.response_points(models.build_model("resnet8", 3))
    assert inspection.run_response_std(run, "cpu").equals(first) and len(calls) == 1  # read, not computed
    perturb(run / "final.pt")
    assert len(calls) == 1 and inspection.run_response_std(run, "cpu") is not None and len(calls) == 2
    image = next((tmp_path / "images" / "test").rglob("*.png"))
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)  # the test set changed
    inspection.run_response_std(run, "cpu")
    assert len(calls) == 3
    inspection.run_response_std(run, "cpu")
    assert len(calls) == 3


def test_a_reimplementation_checkpoint_is_converted_and_normalized_per_channel(tmp_path):
    images, labels = (torch.as_tensor(a) for a in write_image_folder(tmp_path / "images", n_test=9)["test"])
    model = fixed_model().eval()
    state = {"module." + k.replace("fc.", "linear."): v for k, v in model.state_dict().items()}
    torch.save({"best_prec1": 91.5, "state_dict": state}, tmp_path / "resnet8.th")
    row, line = evaluate_weights(
        tmp_path / "resnet8.th", str(tmp_path / "images"), "resnet8", normalize="imagenet-channel"
    )
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in evaluation.IMAGENET_CHANNEL)
    with torch.no_grad():
        logits = model((images.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    labels = labels.long()
    assert row["test_err"] == pytest.approx(100 * (logits.argmax(1) != labels).float().mean().item(), abs=1e-4)
    assert row["test_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    assert row["run_last_test_err"] == "" and "per-channel mean (0.485, 0.456, 0.406)" in line
    with pytest.raises(WeightsError, match="--normalize"):
        evaluate_weights(tmp_path / "resnet8.th", str(tmp_path / "images"), "resnet8")
    with pytest.raises(WeightsError, match="--model"):
        evaluate_weights(tmp_path / "resnet8.th", str(tmp_path / "images"), normalize="imagenet-channel")
    with pytest.raises(WeightsError, match="do not fit resnet14"):
        evaluate_weights(tmp_path / "resnet8.th", str(tmp_path / "images"), "resnet14", normalize="imagenet-channel")


class Opaque:
    """Pickled by reference: only code can rebuild it."""


def test_a_file_that_needs_code_to_load_is_refused_in_one_line(tmp_path, capsys):
    torch.save({"state_dict": fixed_model().eval().state_dict(), "extra": Opaque()}, tmp_path / "w.pt")
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", str(tmp_path / "w.pt"), "--model", "resnet8", "--data", "mini"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "refused" in err and "Opaque" in err
    assert "weights_only" not in err and "False" not in err


def published_cifar_weights(folder, name="resnet20"):
    """A checkpoint in the layout the common CIFAR re-implementations publish (akamaster/pytorch_resnet_cifar10's
    pretrained_models/*.th: {"best_prec1", "state_dict"}, DataParallel's `module.` prefix, a `linear` head),
    named as torch.hub names published weights, <name>-<sha256 prefix>.th: its path."""
    torch.manual_seed(0)
    state = {f"module.{k.replace('fc.', 'linear.')}": v for k, v in models.build_model(name, 10).state_dict().items()}
    tmp = folder / "w.th"
    torch.save({"best_prec1": 91.78, "state_dict": state}, tmp)
    return tmp.rename(folder / f"{name}-{files.sha256_file(tmp)[:8]}.th")


def test_published_weights_are_evaluated_from_their_url_downloaded_once_hash_checked(http_dir, tmp_path):
    served, base = http_dir
    path = published_cifar_weights(served)
    url = f"{base}/{path.name}"
    row, line = evaluate_weights(url, "mini", "resnet20", tmp_path / "d", "imagenet-channel")
    assert (tmp_path / "d" / "weights" / path.name).read_bytes() == path.read_bytes()
    assert row["weights"] == url and row["test_images"] == 1000 and line.startswith(url)
    assert row["weights_md5"] == hashlib.md5(path.read_bytes()).hexdigest() and 0 <= row["test_err"] <= 100
    path.unlink()  # downloaded once: the second evaluate reads the local copy
    assert (
        evaluate_weights(url, "mini", "resnet20", tmp_path / "d", "imagenet-channel")[0]["test_err"] == row["test_err"]
    )


def test_weights_whose_hash_is_not_their_names_are_refused(http_dir, tmp_path):
    served, base = http_dir
    path = published_cifar_weights(served)
    wrong = path.rename(served / "resnet20-00000000.th")
    with pytest.raises(ValueError, match="could not download .*invalid hash value"):
        evaluate_weights(f"{base}/{wrong.name}", "mini", "resnet20", tmp_path / "d", "imagenet-channel")
    assert not list((tmp_path / "d" / "weights").glob("*"))  # nothing half-downloaded is left
    (tmp_path / "d" / "weights" / wrong.name).write_bytes(wrong.read_bytes())  # put there by hand
    with pytest.raises(ValueError, match="does not have the hash its name says"):
        evaluate_weights(f"{base}/{wrong.name}", "mini", "resnet20", tmp_path / "d", "imagenet-channel")


def test_weights_of_the_common_cifar_layout_read_as_tensors_only(tmp_path):
    state, config, mean = evaluation.read_weights(published_cifar_weights(tmp_path))  # best_prec1 is a float
    assert config is None and mean is None and state["fc.weight"].shape == (10, 64) and "linear.weight" not in state


def test_a_runs_final_pt_evaluates_where_its_training_data_is_gone(tmp_path):
    run = train_tiny(tmp_path / "t")
    saved = files.load_tensors(run / "final.pt")
    assert torch.equal(saved["mean"], memory.load(str(tmp_path / "t" / "images")).mean)  # the mean it trained with
    moved = (tmp_path / "t" / "images").rename(tmp_path / "test-only")  # the recorded path no longer exists
    row, line = evaluate_weights(run / "final.pt", str(moved))
    assert "per-pixel mean of images (the run's)" in line and row["normalize"] == "run"
    assert row["test_err"] == pytest.approx(float(metrics.read_metrics(run / "metrics.csv")[-1]["test_err"]), abs=1e-4)


def test_evaluate_writes_where_the_user_is_never_into_the_committed_figures(run_dir, tmp_path, monkeypatch, capsys):
    committed = ROOT / "figures" / "evaluations.csv"
    before = committed.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["evaluate", str(run_dir / "final.pt")]) == 0
    assert "row appended to evaluations.csv" in capsys.readouterr().out
    assert len((tmp_path / "evaluations.csv").read_text().splitlines()) == 2 and committed.read_bytes() == before


def test_the_evaluations_csv_gets_whole_rows_under_its_own_header_or_none(tmp_path, monkeypatch):
    path, row = tmp_path / "new" / "evaluations.csv", dict.fromkeys(evaluation.CSV_COLUMNS, "x")
    evaluation.append_row(row, path)
    evaluation.append_row(row, path)
    line = ",".join(["x"] * len(evaluation.CSV_COLUMNS))
    assert path.read_bytes() == f"{','.join(evaluation.CSV_COLUMNS)}\r\n{line}\r\n{line}\r\n".encode()
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(WeightsError, match="other.csv has other columns than an evaluations CSV; pass another --csv"):
        evaluation.append_row(row, other)
    assert other.read_text() == "a,b\n1,2\n"
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the row is written, then the disk refuses it
    with pytest.raises(files.DiskFull, match="disk full while writing"):
        evaluation.append_row(row, path)
    with pytest.raises(files.DiskFull, match=r"disk full while writing .*metrics.csv. Free space and --resume."):
        metrics.append_row(tmp_path / "metrics.csv", dict.fromkeys(metrics.COLUMNS, 1))
    assert path.read_bytes() == before and not (tmp_path / "metrics.csv").exists()
