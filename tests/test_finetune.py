import json
import os
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import write_image_folder
from resnet_repro import files, finetune, models


def test_load_pretrained_replaces_a_classifier_of_another_size():
    source = torchvision.models.resnet18(weights=None).state_dict()
    model = models.build_model("resnet18", 10)
    fresh = models.load_pretrained(model, source)
    assert fresh == ["fc.weight", "fc.bias"]
    assert torch.equal(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    assert model.fc.weight.shape == (10, 512)
    with pytest.raises(ValueError, match="do not fit"):
        models.load_pretrained(models.build_model("resnet34", 10), source)


def cache_as_torchvision(tmp_path, monkeypatch, obj):
    """Save `obj` into a torch cache under tmp_path, named as torch.hub names published weights (its sha256 prefix),
    and point torchvision's resnet18 weights there (offline): the file's path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    tmp = tmp_path / "w.pth"
    torch.save(obj, tmp)
    name = f"resnet18-{files.sha256_file(tmp)[:8]}.pth"
    monkeypatch.setattr(torchvision.models.ResNet18_Weights.DEFAULT.value, "url", f"http://nonexistent.invalid/{name}")
    cached = tmp_path / "hub" / "checkpoints" / name
    cached.parent.mkdir(parents=True, exist_ok=True)
    return tmp.rename(cached)


def test_torchvision_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    reference = torchvision.models.resnet18(weights=None).state_dict()
    cache_as_torchvision(tmp_path, monkeypatch, reference)
    state = models.pretrained_state_dict("resnet18", "torchvision")
    assert all(torch.equal(state[k], reference[k]) for k in reference)


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["TORCH_HOME"]) / "ran",))


def test_a_crafted_file_in_the_torch_cache_runs_no_code(tmp_path, monkeypatch):
    """Under the name torchvision's weights have, or under a name with its own hash: refused, never unpickled."""
    cached = cache_as_torchvision(tmp_path, monkeypatch, {"fc.weight": Payload()})
    with pytest.raises(ValueError, match="refused: it holds objects that only code could rebuild"):
        models.pretrained_state_dict("resnet18", "torchvision")
    cached.rename(cached.with_name("resnet18-f37072fd.pth"))  # the real file's name, not its hash
    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.DEFAULT.value, "url", "http://x.invalid/resnet18-f37072fd.pth"
    )
    with pytest.raises(ValueError, match="does not have the hash its name says"):
        models.pretrained_state_dict("resnet18", "torchvision")
    assert not (tmp_path / "ran").exists()


def test_torchvision_weights_offline_and_absent_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.DEFAULT.value, "url", "http://nonexistent.invalid/resnet18-f37072fd.pth"
    )
    with pytest.raises(
        ValueError, match=r"could not download .*Offline, put .*resnet18-f37072fd.pth into .*hub/checkpoints/"
    ):
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
