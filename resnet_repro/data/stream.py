"""ImageNet-style data: JPEG folders too big for the device, decoded and augmented per step.

The paper's ImageNet recipe (Section 3.4): the shorter side resized to a random s in [256, 480], a
224x224 crop, a horizontal flip, the per-pixel mean subtracted, AlexNet's PCA colour ("lighting")
augmentation; tested with 10 crops (4 corners and the centre, and their flips) of the image resized
to 256 on its shorter side. Here DataLoader workers decode (torchvision.io, libjpeg-turbo) and cut the
crop, resizing only the crop (the same as resizing the image to s and cropping, without resizing the
whole image); the device gets uint8 crops and does the rest batched.

Every image's random draws come from its own generator seeded by (seed, epoch, index), so a batch is
the same whatever the number of workers or processes, and a resumed run sees the same images.

Data: a directory `train/<class>/<image>` with `val/` (ImageNet's layout) or `test/` beside it, or a
`.tar.gz` of one (extracted once into `data_dir/cache/`).
"""

import hashlib
import multiprocessing
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_image

from resnet_repro.data.sources import (
    DataError,
    Dataset,
    archive_cache,
    cached,
    dataset_name,
    image_tree,
    local_path,
    normalize,
)

# AlexNet's PCA of ImageNet's RGB pixels (values in [0, 1]), as used by the usual ResNet reimplementations
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
MEAN_IMAGES = 10_000  # training images (a fixed random sample) whose centre crops give the per-pixel mean
CACHE_VERSION = 1


@dataclass
class JpegSplit:
    """One split of an image folder: files and labels, decoded when a batch asks for them; a BatchSource
    (resnet_repro.data.loader)."""

    files: list  # absolute paths, sorted by class then name
    labels: torch.Tensor  # int64 (N,)
    crop: int  # the side of the crops given to the model (224)
    test_resize: int  # evaluation: the shorter side is resized to this before cropping (256)
    scale: tuple = (256, 480)  # training: the shorter side is resized to a random value in this range (inclusive)
    lighting: float = 0.1  # training: std of AlexNet's PCA colour noise (0: none)
    workers: int = 0  # DataLoader worker processes

    def __len__(self):
        return len(self.labels)

    def train_batches(self, plan):
        # decoded and cropped by the workers, each image's draws seeded by (seed, epoch, index); lighting on the device
        order, batch, shard = plan.perm.cpu(), plan.batch_size, slice(plan.rank, None, plan.world_size)
        shards = [order[p * batch : (p + 1) * batch][shard].tolist() for p in range(plan.start, len(self) // batch)]
        for x, y, shift in _loader(_TrainItems(self, plan.seed, plan.epoch), shards, self.workers, plan.device):
            x, y, shift = (t.to(plan.device, non_blocking=True) for t in (x, y, shift))
            yield lighting(normalize(x, plan.mean), shift), y

    def eval_batches(self, mean, batch_size, device, rank=0, world_size=1, views=1):
        for x, y in crops(self, list(range(rank, len(self), world_size)), max(1, batch_size // views), device, views):
            yield normalize(x, mean), y

    def sample(self, index):
        return next(crops(self, torch.as_tensor(index).tolist(), len(index), "cpu"))


def read_image(path):
    """uint8 (3, H, W) RGB; torchvision's decoders first (JPEG, PNG, WebP, GIF), PIL for anything else."""
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        from PIL import Image

        try:
            with Image.open(path) as img:
                return torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1).contiguous()
        except Exception as e:
            raise DataError(f"cannot decode image {path}: {e}") from None


def sample_generator(seed, epoch, index):
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % (1 << 63))


def train_crop(img, split, generator):
    """Scale augmentation, crop and flip of one uint8 image; returns the crop and its lighting shift (3,)."""
    h, w = img.shape[-2:]
    lo, hi = split.scale
    s = int(torch.randint(lo, hi + 1, (), generator=generator))
    f = s / min(h, w)  # the image resized by f has shorter side s
    side = max(1, min(h, w, round(split.crop / f)))  # the crop's side in the decoded image
    top = int(torch.randint(0, h - side + 1, (), generator=generator))
    left = int(torch.randint(0, w - side + 1, (), generator=generator))
    x = TF.resized_crop(img, top, left, side, side, [split.crop, split.crop], antialias=True)
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    alpha = torch.randn(3, generator=generator) * split.lighting
    return x, EIGVEC @ (alpha * EIGVAL)


def eval_crops(img, split, views=1):
    """The centre crop (views=1), or AlexNet's 10 crops stacked (views=10), of the image resized to
    test_resize on its shorter side."""
    x = TF.resize(img, [split.test_resize], antialias=True)
    if views == 1:
        return TF.center_crop(x, [split.crop])
    return torch.stack(TF.ten_crop(x, [split.crop]))


class _TrainItems(torch.utils.data.Dataset):
    def __init__(self, split, seed, epoch):
        self.split, self.seed, self.epoch = split, seed, epoch

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        x, shift = train_crop(read_image(self.split.files[i]), self.split, sample_generator(self.seed, self.epoch, i))
        return x, self.split.labels[i], shift


class _EvalItems(torch.utils.data.Dataset):
    def __init__(self, split, views):
        self.split, self.views = split, views

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return eval_crops(read_image(self.split.files[i]), self.split, self.views), self.split.labels[i]


def _worker_context():
    """Workers start from a fork server, not by forking this process: a fork while another thread holds one of
    CPython's locks hangs the child for good (seen under torchrun, whose processes run threads)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["resnet_repro.data.stream"])  # the server imports torch once; forks from it are quick
    return ctx


def _loader(items, batches, workers, device):
    """The batches of `items` as DataLoader workers make them; a bad image one of them meets raises its DataError
    with the worker's one-line message, not with the worker's traceback."""
    loader = torch.utils.data.DataLoader(
        items,
        batch_sampler=batches,
        num_workers=workers,
        multiprocessing_context=_worker_context() if workers else None,
        pin_memory=torch.device(device).type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    try:
        yield from loader
    except DataError as e:  # a worker's arrives as "Caught DataError in DataLoader worker ... DataError: <message>"
        raise DataError(str(e).strip().splitlines()[-1].split("DataError: ")[-1]) from None


def crops(split, indices, batch_size, device, views=1):
    """Yields (uint8 crops (B, 3, c, c) or (B, 10, 3, c, c), labels) on `device` over `indices` in order."""
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    for x, y in _loader(_EvalItems(split, views), chunks, split.workers, device):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def lighting(x, shift):
    """Add each image's lighting shift (B, 3) to a normalized float batch (B, 3, H, W)."""
    return x + shift.to(x.dtype)[:, :, None, None]


# --- folders and archives ----------------------------------------------------------------------


def load(source, data_dir="data", device="cpu", crop=224, test_resize=256, scale=(256, 480), lighting=0.1, workers=0):
    """A Dataset whose splits are JpegSplits; `mean` is the per-pixel mean (3, crop, crop) in [0, 1] of
    the centre crops of up to MEAN_IMAGES training images (computed once, cached in data_dir/cache)."""
    data_dir = Path(data_dir)
    path, root = _root(source, data_dir)
    classes, train_files, train_labels, test_files, test_labels = _scan(root)
    listing = hashlib.md5()
    for f in (*train_files, *test_files):
        listing.update(f"{Path(f).relative_to(root).as_posix()}\t{os.path.getsize(f)}\n".encode())
    # of the file names and sizes: hashing ImageNet's 150 GB would take longer than an epoch
    checksum = listing.hexdigest()
    common = dict(crop=crop, test_resize=test_resize, workers=workers)
    train = JpegSplit(train_files, train_labels, scale=tuple(scale), lighting=lighting, **common)
    test = JpegSplit(test_files, test_labels, **common)
    cache = data_dir / "cache" / f"mean-{checksum[:12]}-{crop}-{test_resize}-v{CACHE_VERSION}.pt"
    mean = cached(cache, lambda: _mean(train), "the per-pixel mean")
    return Dataset(dataset_name(path, checksum), classes, train, test, mean.to(device), checksum, str(source))


def _root(source, data_dir):
    """(the --data path, the folder to scan: that path, or where its archive is extracted once)"""
    if source in ("cifar10", "cifar100"):
        raise DataError(
            f'the stream loader reads image folders; {source} is a torchvision download (use loader = "memory")'
        )
    path = local_path(
        source,
        "Pass --data PATH: an ImageFolder directory with train/ and val/ (ImageNet's layout) or test/, "
        "or a .tar.gz of one.",
    )
    if path.is_dir():
        return path, path
    out = archive_cache(path, data_dir)
    if not (out / ".complete").exists():
        # torchrun's processes may all get here: each extracts into its own folder and renames it into
        # place whole (with .complete inside); whoever comes second throws its copy away.
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with tarfile.open(path, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                f"corrupt or unreadable archive {path}: {e}. Get a fresh copy (expected a .tar.gz of an ImageFolder "
                "tree)."
            ) from None
        (tmp / ".complete").touch()
        if out.exists() and not (out / ".complete").exists():
            shutil.rmtree(out, ignore_errors=True)  # an extraction cut short
        try:
            os.replace(tmp, out)
        except OSError:  # another process put a complete copy there first
            shutil.rmtree(tmp, ignore_errors=True)
    return path, out


def _scan(path):
    """The train/ and val/ (or test/) ImageFolder trees under `path`, at any depth."""
    files = [f.relative_to(path).as_posix() for f in sorted(path.rglob("*")) if f.is_file()]
    splits = image_tree(files, ("train", "val", "test"))
    evaluation = "val" if splits["val"] else "test"
    if not splits["train"] or not splits[evaluation]:
        raise DataError(
            f"{path} has no train/<class>/<image> and val/<class>/<image> (or test/) files: expected an ImageFolder "
            f"tree such as ImageNet's train/n01440764/n01440764_10026.JPEG, val/n01440764/ILSVRC2012_val_00000293.JPEG."
        )
    classes = sorted(splits["train"])
    unknown = sorted(set(splits[evaluation]) - set(classes))
    if unknown:
        raise DataError(f"{path}: {evaluation}/ has classes that train/ lacks: {', '.join(unknown[:5])}")
    if len(classes) < 2:
        raise DataError(f"{path}: found {len(classes)} class(es) {classes}; a classification dataset needs at least 2.")

    def flat(by_class):
        files = [str(path / f) for c in classes for f in by_class.get(c, [])]
        labels = [i for i, c in enumerate(classes) for _ in by_class.get(c, [])]
        return files, torch.tensor(labels, dtype=torch.int64)

    return (classes, *flat(splits["train"]), *flat(splits[evaluation]))


def _mean(train):
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:MEAN_IMAGES].sort().values.tolist()
    total = torch.zeros(3, train.crop, train.crop, dtype=torch.float64)
    for x, _ in crops(train, order, 250, "cpu"):
        total += x.double().sum(0)
    return (total / len(order) / 255).float()
