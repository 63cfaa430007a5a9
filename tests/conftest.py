import csv
import functools
import hashlib
import http.server
import importlib.util
import io
import json
import os
import pickle
import signal
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_repro import models
from resnet_repro.engine import metrics

CLASSES = ["airplane", "automobile", "bird"]


ROOT = Path(__file__).resolve().parent.parent  # the checkout
FIXTURES = ROOT / "tests" / "fixtures"  # committed run directories of older code


def load_tool(name):
    """tools/<name>.py, the repository's own tooling (outside the package), as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WNIDS = ["n01", "n02", "n03"]  # ImageNet-style class folders
SIZES = [(40, 48), (60, 36), (36, 36), (52, 44)]  # (width, height): the shorter side varies, as ImageNet's


def write_jpeg_folder(root, n_train=24, n_val=9, evaluation="val"):
    """ImageNet's layout with small JPEGs of several sizes: root/train/<wnid>/x.JPEG, root/<evaluation>/<wnid>/x.JPEG."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), (evaluation, n_val)):
        for i in range(n):
            w, h = SIZES[i % len(SIZES)]
            # a class-dependent tint so a net can learn something
            img = (
                rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
                + np.array([120, 60, 0], dtype=np.uint8)[np.roll(np.arange(3), i % 3)]
            )
            path = root / split / WNIDS[i % 3] / f"{split}_{i:04d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=90)
    return root


def tiny_images(n, size=32, seed=0):
    """n random RGB images (N, H, W, 3) uint8 and labels cycling over CLASSES."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % len(CLASSES)


def write_image_folder(root, n_train=12, n_test=6, size=32, fmt="png", classes=CLASSES):
    """An ImageFolder tree root/{train,test}/<class>/NNNN.<fmt>; returns {split: (images, labels)}."""
    out = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = tiny_images(n, size, seed)
        labels = labels % len(classes)
        for i, (img, label) in enumerate(zip(images, labels)):
            path = Path(root) / split / classes[label] / f"{i:04d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
        out[split] = (images, labels)
    return out


def write_tar_gz(src_dir, archive, arcname):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_dir, arcname=arcname)
    return archive


def write_cifar10_python_tgz(path, n_train=20, n_test=10):
    """A cifar-10-python.tar.gz in the real layout (pickled batches), with tiny random content."""
    train, train_labels = tiny_images(n_train, seed=0)
    test, test_labels = tiny_images(n_test, seed=1)
    batches = {}
    for i, idx in enumerate(np.array_split(np.arange(n_train), 5)):
        batches[f"data_batch_{i + 1}"] = {
            "data": train[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1),
            "labels": train_labels[idx].tolist(),
        }
    batches["test_batch"] = {"data": test.transpose(0, 3, 1, 2).reshape(n_test, -1), "labels": test_labels.tolist()}
    batches["batches.meta"] = {"label_names": CLASSES + [f"class{i}" for i in range(3, 10)]}
    md5s = {}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in batches.items():
            payload = pickle.dumps(obj)
            md5s[name] = hashlib.md5(payload).hexdigest()
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return {"train": (train, train_labels), "test": (test, test_labels)}, md5s


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "tiny"
    return root, write_image_folder(root)


@pytest.fixture
def http_dir(tmp_path):
    """A folder served over HTTP on loopback, as a dataset host would: yields (folder, base_url)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


FULL, MINI = "CIFAR-10 (JPEG q75 copy)", "CIFAR-10 mini (JPEG q75 copy, 500+100 per class)"
TIMING = ("epoch_seconds", "images_per_second")  # metrics.csv columns that differ between identical runs


def csv_rows(path, drop=()):
    """metrics.csv as a list of dicts, without the `drop` columns."""
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def write_experiment(path, data, runs=("plain8", "resnet8"), iterations=4, batch_size=8, eval_batch_size=8):
    """An experiment file of tiny runs on `data`, the lr falling at half of `iterations`; returns its path."""
    path.write_text(f"""
runs = {json.dumps(list(runs))}
[train]
data = "{data}"
batch_size = {batch_size}
iterations = {iterations}
milestones = [{iterations // 2}]
eval_batch_size = {eval_batch_size}
""")
    return path


def job(spec, run_dir, experiment="exp", run=None, **options):
    """A plan.Job of `spec` into run_dir (its name is the run's unless `run` is given), on the CPU, no progress bar
    unless `progress` is given."""
    from resnet_repro.launch.plan import Job

    return Job(spec, experiment, run or Path(run_dir).name, str(run_dir), **{"progress": False, **options})


def interrupt_at(monkeypatch, step, sig=signal.SIGINT):
    """Send `sig` to ourselves from inside the `step`-th augmentation call (mid-iteration)."""
    from resnet_repro.data import memory

    calls = {"n": 0}
    real = memory.augment

    def augment(x, g):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), sig)
        return real(x, g)

    monkeypatch.setattr(memory, "augment", augment)


def train_run(spec, dataset, run_dir, **options):
    """train.train of job(spec, run_dir, **options): its Outcome."""
    from resnet_repro.engine import train

    return train.train(job(spec, run_dir, **options), dataset)


def write_run(
    root,
    run,
    experiment="degradation",
    epochs=4,
    quick=False,
    stem=None,
    seed=0,
    offset=0.0,
    state="done",
    planned_iterations=None,
):
    """A run directory as the engine writes it, with known curves; returns the CSV rows as dicts. Its config's
    `iterations` (planned_iterations) is the paper's unless given or quick: the curves stand for a part of the run."""
    kind, depth = models.parse_name(run)
    run_dir = root / experiment / run
    run_dir.mkdir(parents=True)
    rows = []
    for epoch in range(1, epochs + 1):
        train_err = 60 / epoch + depth / 10 + offset  # deeper plain nets train worse, as the paper
        rows.append(
            {
                "experiment": experiment,
                "run": run,
                "model": run,
                "depth": depth,
                "residual": kind == "resnet",
                "epoch": epoch,
                "iteration": 391 * epoch,
                "lr": 0.1,
                "train_loss": train_err / 30,
                "train_err": train_err,
                "test_loss": train_err / 25,
                "test_err": train_err + 3 - epoch % 2,
                "epoch_seconds": 10.0 + epoch,
                "images_per_second": 5000.0,
            }
        )
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(metrics.COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    stem = stem or ("imagenet" if models.is_imagenet_family(run) else "cifar")
    config = {
        "experiment": experiment,
        "run": run,
        "model": run,
        "depth": depth,
        "residual": kind == "resnet",
        "shortcut": "A",
        "stem": stem,
        "num_classes": 10,
        "dataset": MINI if quick else FULL,
        "dataset_checksum": "abc",
        "data": "mini" if quick else "cifar10",
        "data_dir": "data",
        "quick": quick,
        "seed": seed,
        "device": "cpu",
        "torch": str(torch.__version__),
        "commit": "1234abc",
        "params": 1000 * depth,
        "batch_size": 128,
        "iterations": planned_iterations or (391 * epochs if quick else 64_000),
        "lr": 0.1,
        "milestones": [2, 3],
        "something_new": [1],
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    if state:
        (run_dir / "status.json").write_text(json.dumps({"state": state, "message": ""}))
    return rows


def fixed_model(seed=0):
    """A tiny resnet8 for 3 classes with random weights and BN statistics, so eval mode is not an identity."""
    model = models.build_model("resnet8", len(CLASSES))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if "running_var" in name
                    else torch.randn(t.shape, generator=g) * 0.5
                )
    return model
