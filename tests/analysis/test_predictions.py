import json
import shutil

import pytest
import torch
from matplotlib.colors import to_rgba
from PIL import Image

from conftest import CLASSES, fixed_model, write_image_folder
from resnet_repro import data, models
from resnet_repro.analysis import cli, inspection
from resnet_repro.data import memory


def tiny_uint8(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_grid_titles_are_predicted_and_true_and_mistakes_are_red():
    images = tiny_uint8(6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    predictions = torch.tensor([0, 2, 2, 1, 1, 2])
    fig = inspection.fig_predictions(images, labels, predictions, CLASSES, title="exp/run")
    assert len(fig.axes) == 6
    for ax, image, t, p in zip(fig.axes, images, labels.tolist(), predictions.tolist()):
        assert ax.get_title() == f"{CLASSES[p]} ({CLASSES[t]})"
        color = to_rgba(ax.title.get_color())
        frame = to_rgba(ax.spines["left"].get_edgecolor())
        if p == t:
            assert color == frame == to_rgba(inspection.RIGHT)
        else:
            assert color == frame == to_rgba(inspection.WRONG) != to_rgba(inspection.RIGHT)
            assert ax.spines["left"].get_linewidth() > 2
        assert (ax.images[0].get_array() == image.permute(1, 2, 0).numpy()).all()  # the raw pixels, not normalized
    suptitle = fig._suptitle.get_text()
    assert suptitle.startswith("exp/run\n") and "4/6 right (66.7%)" in suptitle


def test_grid_is_rows_of_eight():
    fig = inspection.fig_predictions(tiny_uint8(11), [0] * 11, [0] * 11, CLASSES)
    rows_cols = {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes}
    assert rows_cols == {(2, 8)} and len(fig.axes) == 11
    assert "11/11 right (100.0%)" in fig._suptitle.get_text()


def test_predict_is_the_eval_argmax_in_any_batch_size():
    model, images = fixed_model(), tiny_uint8(10)
    mean = images.float().mean(0) / 255
    expected = model.eval()(data.normalize(images, mean)).argmax(1)
    model.train()
    for batch in (3, 1000):
        assert torch.equal(inspection.predict(model, images, mean, "cpu", batch), expected)
    assert not model.training


def test_sample_indices_are_fixed_by_the_seed_and_capped():
    assert torch.equal(inspection.sample_indices(100, 8, seed=1), inspection.sample_indices(100, 8, seed=1))
    assert not torch.equal(inspection.sample_indices(100, 8, seed=1), inspection.sample_indices(100, 8, seed=2))
    assert inspection.sample_indices(5, 32).tolist() == [0, 1, 2, 3, 4]


def write_finished_run(root, data_path, final=True):
    run_dir = root / "results" / "tiny" / "resnet8"
    run_dir.mkdir(parents=True)
    config = {
        "experiment": "tiny",
        "run": "resnet8",
        "model": "resnet8",
        "num_classes": len(CLASSES),
        "shortcut": "A",
        "stem": "cifar",
        "data": str(data_path),
        "data_dir": str(root / "data"),
        "dataset": "tiny",
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    model = fixed_model()
    if final:
        torch.save({"model": model.state_dict(), "config": config}, run_dir / "final.pt")
    return run_dir, model


def test_cli_draws_a_finished_runs_predictions(tmp_path, monkeypatch, capsys):
    write_image_folder(tmp_path / "images", n_test=9)
    run_dir, model = write_finished_run(tmp_path, tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predictions", str(run_dir), "--n", "4"]) == 0
    out = tmp_path / "figures" / "predictions-tiny-resnet8.png"
    assert Image.open(out).format == "PNG"
    ds = memory.load(str(tmp_path / "images"))
    index = inspection.sample_indices(len(ds.test), 4)
    right = (inspection.predict(model, ds.test.images[index], ds.mean) == ds.test.labels[index]).sum().item()
    assert capsys.readouterr().out.strip() == f"{out.relative_to(tmp_path)}: {right}/4 right"

    assert cli.main(["predictions", str(run_dir), "--out", str(tmp_path / "all.png")]) == 0
    assert (tmp_path / "all.png").exists()
    assert capsys.readouterr().out.strip().endswith("/9 right")  # --n 32 capped at the 9 test images


def test_cli_says_when_the_run_is_not_finished(tmp_path, capsys):
    run_dir, _ = write_finished_run(tmp_path, tmp_path / "images", final=False)
    (run_dir / "status.json").write_text(json.dumps({"state": "interrupted"}))
    with pytest.raises(SystemExit) as e:
        cli.main(["predictions", str(run_dir)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no final.pt" in err and "not finished (state: interrupted)" in err


def test_cli_says_when_the_data_cannot_be_loaded(tmp_path, capsys):
    run_dir, _ = write_finished_run(tmp_path, tmp_path / "nowhere")
    with pytest.raises(SystemExit) as e:
        cli.main(["predictions", str(run_dir)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: data not found:") and "nowhere" in err


def test_cli_says_when_a_done_run_has_no_weights(tmp_path, capsys):
    run_dir, _ = write_finished_run(tmp_path, tmp_path / "images", final=False)
    (run_dir / "status.json").write_text(json.dumps({"state": "done"}))
    with pytest.raises(SystemExit):
        cli.main(["predictions", str(run_dir)])
    err = capsys.readouterr().err
    assert "done but its weights are not here" in err and "not finished" not in err


def test_the_same_run_of_two_result_roots_draws_two_files(tmp_path, monkeypatch, capsys):
    write_image_folder(tmp_path / "images", n_test=9)
    run_dir, _ = write_finished_run(tmp_path, tmp_path / "images")
    shutil.copytree(run_dir, tmp_path / "elsewhere" / "tiny" / "resnet8")
    monkeypatch.chdir(tmp_path)
    for root in ("results", "elsewhere"):
        assert cli.main(["predictions", f"{root}/tiny/resnet8", "--n", "4"]) == 0
    drawn = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert drawn == ["predictions-elsewhere-tiny-resnet8.png", "predictions-tiny-resnet8.png"]


def test_a_final_pt_of_bare_weights_is_refused_in_one_line(tmp_path):
    """final.pt is read as models.read_weights reads every weights file: bare weights have no run config."""
    torch.save(models.build_model("resnet8").state_dict(), tmp_path / "final.pt")
    with pytest.raises(inspection.CannotDraw, match="weights without the run's config"):
        inspection.load_finished(tmp_path)
    (tmp_path / "final.pt").write_bytes(b"not a torch file")
    with pytest.raises(inspection.CannotDraw, match="final.pt"):
        inspection.load_finished(tmp_path)
