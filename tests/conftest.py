import csv
import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["airplane", "automobile", "bird"]


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


TIMING = ("epoch_seconds", "images_per_second")  # metrics.csv columns that differ between identical runs


def csv_rows(path, drop=()):
    """metrics.csv as a list of dicts, without the `drop` columns."""
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def job(spec, run_dir, experiment="exp", run=None, **options):
    """A plan.Job of `spec` into run_dir (its name is the run's unless `run` is given), on the CPU, no progress bar."""
    from resnet_repro.plan import Job

    return Job(spec, experiment, run or Path(run_dir).name, str(run_dir), progress=False, **options)


def train_run(spec, dataset, run_dir, **options):
    """train.train of job(spec, run_dir, **options): its Outcome."""
    from resnet_repro import train

    return train.train(job(spec, run_dir, **options), dataset)
