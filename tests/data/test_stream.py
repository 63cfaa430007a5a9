"""The stream loader (ImageNet recipe): JPEG folders decoded per step, and the engine on it."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TIMING, WNIDS, csv_rows, train_run, write_jpeg_folder, write_tar_gz
from resnet_repro import data
from resnet_repro.analysis import inspection
from resnet_repro.config import SpecError, TrainSpec
from resnet_repro.data import EpochPlan, stream
from resnet_repro.engine import recipe, rundir
from resnet_repro.models import build_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_jpeg_folder(tmp_path_factory.mktemp("jpeg") / "imagenet-tiny")


def load(folder, tmp_path, workers=0, **kw):
    return stream.load(str(folder), tmp_path / "data", crop=32, test_resize=36, scale=(36, 64), workers=workers, **kw)


def spec(**kw):
    base = dict(
        model="resnet8",
        loader="stream",
        image_size=32,
        scale=(36, 64),
        test_resize=36,
        batch_size=6,
        iterations=9,
        milestones=(6,),
        eval_batch_size=20,
    )
    return TrainSpec(**{**base, **kw})


def test_a_folder_loads_as_files_labels_and_a_cached_per_pixel_mean(folder, tmp_path):
    ds = load(folder, tmp_path)
    assert ds.classes == WNIDS and len(ds.train) == 24 and len(ds.test) == 9
    assert ds.train.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8  # sorted by class, then file name
    assert ds.mean.shape == (3, 32, 32) and 0 < float(ds.mean.min()) and float(ds.mean.max()) < 1
    expected = (
        torch.stack([stream.eval_crops(stream.read_image(f), ds.train) for f in ds.train.files]).double().mean(0) / 255
    )
    assert torch.allclose(ds.mean.double(), expected, atol=1e-6)  # every image: fewer than MEAN_IMAGES
    cached = list((tmp_path / "data" / "cache").glob("mean-*.pt"))
    assert len(cached) == 1
    torch.save(torch.zeros(3, 32, 32), cached[0])
    assert float(load(folder, tmp_path).mean.abs().sum()) == 0  # read back, not recomputed
    assert load(folder, tmp_path).checksum == ds.checksum


def test_test_folder_and_tar_gz_archives_are_read_too(tmp_path):
    root = write_jpeg_folder(tmp_path / "t", n_train=6, n_val=3, evaluation="test")
    archive = write_tar_gz(root, tmp_path / "t.tar.gz", "t")
    ds = stream.load(str(archive), tmp_path / "data", crop=32, test_resize=36, scale=(36, 64))
    assert len(ds.train) == 6 and len(ds.test) == 3 and ds.name == "t"
    assert all(str(tmp_path / "data" / "cache") in f for f in ds.train.files)
    again = stream.load(str(archive), tmp_path / "data", crop=32, test_resize=36, scale=(36, 64))
    assert again.train.files == ds.train.files and again.checksum == ds.checksum


def test_scale_augmentation_crops_and_flips_reproducibly(folder, tmp_path):
    ds = load(folder, tmp_path)
    img = stream.read_image(ds.train.files[0])  # 40x48
    a, shift_a = stream.train_crop(img, ds.train, stream.sample_generator(0, 0, 5))
    b, shift_b = stream.train_crop(img, ds.train, stream.sample_generator(0, 0, 5))
    c, _ = stream.train_crop(img, ds.train, stream.sample_generator(0, 1, 5))
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, b) and torch.equal(shift_a, shift_b) and not torch.equal(a, c)
    # s == crop == the image's shorter side: the crop is a window of the image itself, maybe flipped
    square = torch.randint(0, 256, (3, 32, 40), dtype=torch.uint8)
    exact = stream.JpegSplit([], torch.zeros(0), crop=32, test_resize=32, scale=(32, 32), lighting=0.0)
    seen = set()
    for i in range(20):
        x, shift = stream.train_crop(square, exact, stream.sample_generator(0, 0, i))
        assert torch.equal(shift, torch.zeros(3))
        windows = [square[:, :, o : o + 32] for o in range(9)]
        match = [
            (o, f) for o, w in enumerate(windows) for f, v in ((False, w), (True, w.flip(-1))) if torch.equal(x, v)
        ]
        assert match
        seen |= {m[1] for m in match}
    assert seen == {False, True}  # both flips happen


def test_lighting_is_alexnets_pca_noise(folder, tmp_path):
    ds = load(folder, tmp_path)
    img = stream.read_image(ds.train.files[0])
    shifts = torch.stack([stream.train_crop(img, ds.train, stream.sample_generator(0, 0, i))[1] for i in range(400)])
    # in the eigenbasis the shift's coordinates are alpha * eigval with alpha ~ N(0, 0.1)
    coords = shifts @ stream.EIGVEC / stream.EIGVAL
    assert coords.std(0).tolist() == pytest.approx([0.1] * 3, rel=0.15)
    x = torch.zeros(2, 3, 4, 4)
    assert torch.equal(stream.lighting(x, shifts[:2])[:, :, 1, 2], shifts[:2])


def test_ten_crops_are_corners_centre_and_their_flips(folder, tmp_path):
    ds = load(folder, tmp_path)
    img = stream.read_image(ds.test.files[1])  # 60x36 -> shorter side 36
    crops = stream.eval_crops(img, ds.test, views=10)
    centre = stream.eval_crops(img, ds.test)
    assert crops.shape == (10, 3, 32, 32) and centre.shape == (3, 32, 32)
    assert torch.equal(crops[4], centre) and torch.equal(crops[9], centre.flip(-1))
    assert len({c.sum().item() for c in crops[:5]}) == 5  # five different windows


def test_batches_do_not_depend_on_the_number_of_workers(folder, tmp_path):
    runs = []
    for workers in (0, 2):
        ds = load(folder, tmp_path, workers=workers)
        perm = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(3))
        runs.append(list(ds.train.train_batches(EpochPlan(perm, 1, 6, ds.mean, None, seed=1, epoch=2))))
    assert len(runs[0]) == len(ds.train) // 6 - 1  # from position 1 on
    for (x0, y0), (x2, y2) in zip(*runs):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert runs[0][0][1].tolist() == ds.train.labels[perm[6:12]].tolist()


def test_the_engine_trains_on_streamed_jpegs_and_tests_with_ten_crops(folder, tmp_path):
    ds = load(folder, tmp_path)
    d = tmp_path / "run"
    result = train_run(spec(ten_crop=True), ds, d, experiment="exp", run="resnet8")
    assert result.state == "done"
    rows = csv_rows(d / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [4, 8, 9]  # 24 images / batch 6 = 4 per epoch
    evaluation = json.loads((d / "evaluation.json").read_text())
    assert evaluation["views"] == 10 and evaluation["images"] == 9 and evaluation["iteration"] == 9
    model = build_model("resnet8", ds.num_classes)
    model.load_state_dict(torch.load(d / "final.pt", weights_only=True)["model"])
    loss, top1, _ = recipe.evaluate(model, ds.test, ds.mean, spec(ten_crop=True), "cpu", views=10)  # the final weights
    assert evaluation["top1_err"] == pytest.approx(top1, abs=1e-3) and evaluation["test_loss"] == pytest.approx(
        loss, rel=1e-4
    )
    config = json.loads((d / "config.json").read_text())
    assert config["loader"] == "stream" and config["scale"] == [36, 64] and config["dataset_checksum"] == ds.checksum


def test_ten_crop_evaluation_averages_the_views(folder, tmp_path):
    ds = load(folder, tmp_path)
    s = spec()
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8)).eval()  # 8 outputs: top-5 can miss
    loss, top1, top5 = recipe.evaluate(model, ds.test, ds.mean, s, "cpu", views=10)
    probs, labels = [], []
    for f, y in zip(ds.test.files, ds.test.labels):
        x = data.normalize(stream.eval_crops(stream.read_image(f), ds.test, 10), ds.mean)
        probs.append(model(x).softmax(1).mean(0))
        labels.append(int(y))
    probs, labels = torch.stack(probs), torch.tensor(labels)
    assert top1 == pytest.approx(100.0 * (probs.argmax(1) != labels).float().mean().item())
    assert loss == pytest.approx(torch.nn.functional.nll_loss(probs.log(), labels).item(), rel=1e-5)
    assert top5 == pytest.approx(100.0 * (probs.topk(5, 1).indices != labels[:, None]).all(1).float().mean().item())
    assert top5 > 0


def test_a_signal_checkpoints_and_resume_is_exact_on_streamed_data(folder, tmp_path, monkeypatch):
    ds = load(folder, tmp_path)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train_run(spec(), ds, whole, experiment="exp", run="r", deterministic=True)
    calls = {"n": 0}
    real = stream.lighting

    def lighting(x, shift):
        calls["n"] += 1
        if calls["n"] == 6:  # mid second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return real(x, shift)

    monkeypatch.setattr(stream, "lighting", lighting)
    with pytest.raises(rundir.Interrupted, match="at iteration 6"):
        train_run(spec(), ds, broken, experiment="exp", run="r", deterministic=True)
    monkeypatch.undo()
    train_run(spec(), ds, broken, experiment="exp", run="r", deterministic=True, resume=True)
    assert csv_rows(broken / "metrics.csv", drop=TIMING) == csv_rows(whole / "metrics.csv", drop=TIMING)
    a, b = torch.load(whole / "final.pt")["model"], torch.load(broken / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_jpeg_fails_the_run_naming_the_file(tmp_path, workers):
    root = write_jpeg_folder(tmp_path / "bad", n_train=12, n_val=3)
    ds = stream.load(
        str(root), tmp_path / "data", crop=32, test_resize=36, scale=(36, 64), workers=workers
    )  # the mean is cached
    bad = sorted((root / "train" / "n02").iterdir())[0]
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    result = train_run(spec(iterations=4), ds, tmp_path / "run", experiment="exp", run="r")
    assert result.state == "failed" and result.message.startswith("cannot decode image") and bad.name in result.message
    assert "\n" not in result.message
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"
    with pytest.raises(data.DataError, match=f"cannot decode image .*{bad.name}") as e:
        stream.load(
            str(root), tmp_path / "fresh", crop=32, test_resize=36, scale=(36, 64), workers=workers
        )  # computing the mean reads it
    assert "\n" not in str(e.value)  # the worker's message, not its traceback


def test_bad_layouts_and_specs_say_what_is_expected(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "a.jpg")
    with pytest.raises(data.DataError, match="train/<class>/<image> and val/<class>/<image>"):
        stream.load(str(tmp_path / "flat"), tmp_path / "data")
    with pytest.raises(data.DataError, match="does not exist"):
        stream.load(str(tmp_path / "nope"), tmp_path / "data")
    with pytest.raises(SpecError, match="scale must be"):
        TrainSpec(loader="stream", image_size=224, scale=(200, 480))
    with pytest.raises(SpecError, match="ten_crop needs loader"):
        TrainSpec(ten_crop=True)
    with pytest.raises(SpecError, match="loader must be"):
        TrainSpec(loader="disk")


def test_predictions_of_a_streamed_run_use_the_centre_crops(folder, tmp_path, capsys):

    ds = load(folder, tmp_path)
    d = tmp_path / "run"
    train_run(
        spec(iterations=4, data=str(folder)),
        ds,
        d,
        experiment="exp",
        run="resnet8",
        data_dir=tmp_path / "data",
    )
    out = tmp_path / "pred.png"
    assert inspection.predictions_main([str(d), "--out", str(out), "--n", "5"]) == 0
    assert out.exists() and capsys.readouterr().out.strip().endswith("/5 right")
