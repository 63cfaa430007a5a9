import json
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import write_image_folder
from resnet_repro import finetune, models


def test_load_pretrained_replaces_a_classifier_of_another_size():
    source = torchvision.models.resnet18(weights=None).state_dict()
    model = models.build_model("resnet18", 10)
    fresh = models.load_pretrained(model, source)
    assert fresh == ["fc.weight", "fc.bias"]
    assert torch.equal(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    assert model.fc.weight.shape == (10, 512)
    with pytest.raises(ValueError, match="do not fit"):
        models.load_pretrained(models.build_model("resnet34", 10), source)


def test_torchvision_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, cached)
    state = models.pretrained_state_dict("resnet18", "torchvision")
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_torchvision_weights_offline_and_absent_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.DEFAULT.value, "url", "http://nonexistent.invalid/resnet18-f37072fd.pth"
    )
    with pytest.raises(ValueError, match=r"not in the torch cache .*hub/checkpoints/resnet18-f37072fd.pth.*Copy"):
        models.pretrained_state_dict("resnet18", "torchvision")
    with pytest.raises(ValueError, match="resnet18/34/50/101/152 only"):
        models.pretrained_state_dict("plain34", "torchvision")
    with pytest.raises(ValueError, match="not found"):
        models.pretrained_state_dict("resnet18", str(tmp_path / "nope.pt"))


def test_finetune_starts_from_the_weights_and_logs_like_any_run(tmp_path, capsys):
    write_image_folder(tmp_path / "drawings", n_train=32, n_test=8, size=40)  # not 32x32: resized when decoded
    source = models.build_model("resnet8", 5)  # another class count: the fc is replaced
    torch.save({"model": source.state_dict()}, tmp_path / "w.pt")
    argv = [
        "--model",
        "resnet8",
        "--weights",
        str(tmp_path / "w.pt"),
        "--data",
        str(tmp_path / "drawings"),
        "--image-size",
        "32",
        "--iterations",
        "2",
        "--set",
        "lr=1e-9",
        "--set",
        "batch_size=16",
        "--out",
        str(tmp_path / "res"),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert finetune.main(argv) == 0
    run_dir = tmp_path / "res" / "finetune" / "resnet8"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["init_weights"], config["image_size"], config["resize"], config["num_classes"]) == (
        str(tmp_path / "w.pt"),
        32,
        True,
        3,
    )
    assert (run_dir / "metrics.csv").read_text().count("\n") == 2
    final = torch.load(run_dir / "final.pt")["model"]
    # lr 1e-9: the convs are still the given weights, not a fresh He init
    assert torch.allclose(final["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"], atol=1e-6)
    assert final["fc.weight"].shape == (3, 64)
    assert "started from" in capsys.readouterr().out
