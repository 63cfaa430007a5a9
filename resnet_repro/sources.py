"""What the two data loaders share (resnet_repro.data: splits in device memory; resnet_repro.stream: JPEGs
decoded per batch): the Dataset they return, DataError, where a --data source is, checksums, ImageFolder trees.

A Dataset's `train` and `test` are batch sources with one interface, whatever the loader:
    len(split)
    split.train_batches(perm, pos, batch, mean, generator, seed, epoch, device, rank, world_size)
        the epoch's batches from position `pos` of the permutation `perm`, as (normalized augmented float
        images, labels): this process's shard of each global batch under torchrun
    split.eval_batches(mean, batch_size, device, rank, world_size, views=1)
        this process's shard of the split in order, as (normalized float images, labels); views=10: AlexNet's
        10 crops, (B, 10, 3, H, W) (stream splits)
    split.sample(index)
        (uint8 images, labels) of the given indices on the CPU, as the test sees them
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

MINI = Path(__file__).with_name("assets") / "cifar10-mini.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
# md5 of known archives -> the name results must carry
KNOWN_ARCHIVES = {
    "bd13d151ab7039c1ed6fe37948a1e90a": "CIFAR-10 (JPEG q75 copy)",
    "fcc84df82c0aa682cc6c958aa0102ddc": "CIFAR-10 mini (JPEG q75 copy, 500+100 per class)",
}


class DataError(Exception):
    """Missing, unreachable or malformed data; the message says what was tried and what to do."""


@dataclass
class Dataset:
    name: str  # what results must call it, e.g. "CIFAR-10 (JPEG q75 copy)"
    classes: list
    train: object  # a batch source (see the module doc)
    test: object  # the test split, or the held-out validation split with val_size > 0
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
    """The file or folder a --data source names ("mini": the bundled archive); DataError if it does not exist."""
    path = MINI if source == "mini" else Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data not found: {path} does not exist. {hint}")
    return path


def md5_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def archive_name(md5, path):
    """What results call an archive: its known name, else its file name."""
    return KNOWN_ARCHIVES.get(md5, Path(path).name)


def image_tree(paths, splits):
    """Group relative POSIX paths laid out as ImageFolder trees, `<split>/<class>/<image>` at any depth:
    {split: {class: [path, ...]}} for each of `splits`, image files only, in the order given."""
    tree = {split: {} for split in splits}
    for rel in paths:
        parts = rel.split("/")
        if len(parts) >= 3 and parts[-3] in tree and parts[-1].lower().endswith(IMAGE_SUFFIXES):
            tree[parts[-3]].setdefault(parts[-2], []).append(rel)
    return tree
