import hashlib
import shutil

import numpy as np
import pytest
import torch
from torchvision import datasets

from conftest import CLASSES, write_cifar10_python_tgz, write_image_folder, write_tar_gz
from resnet_repro import data
from resnet_repro.data import memory
from resnet_repro.data.sources import DataError


def test_image_folder_decodes_exact_pixels_and_labels(image_folder):
    root, written = image_folder
    ds = memory.load(str(root))
    assert ds.classes == CLASSES and ds.num_classes == 3
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (12, 3, 32, 32)
    # Files are read class by class; match each decoded image to the one written (PNG is lossless).
    images, labels = written["train"]
    order = np.lexsort((np.arange(len(labels)), labels))
    assert torch.equal(ds.train.images, torch.from_numpy(images[order]).permute(0, 3, 1, 2))
    assert ds.train.labels.tolist() == labels[order].tolist()
    assert len(ds.test) == 6
    torch.testing.assert_close(ds.mean, ds.train.images.float().mean(0) / 255)


def test_nested_tar_gz_is_decoded_once_then_read_from_cache(image_folder, tmp_path, monkeypatch):
    root, _ = image_folder
    archive = write_tar_gz(root, tmp_path / "tiny.tar.gz", arcname="Tiny-Images")
    first = memory.load(str(archive), data_dir=tmp_path / "d")
    assert len(list((tmp_path / "d" / "cache").glob("*.pt"))) == 1
    monkeypatch.setattr(memory, "_decode_tree", lambda *a: pytest.fail("decoded again instead of using the cache"))
    second = memory.load(str(archive), data_dir=tmp_path / "d")
    assert torch.equal(first.train.images, second.train.images) and first.checksum == second.checksum
    assert first.name == "tiny" and first.classes == CLASSES  # named by the archive, without its suffix


def test_a_cloned_folder_and_a_tar_gz_of_it_are_one_dataset(image_folder, tmp_path):
    """A git clone of an image repository (a README and .git beside train/ and test/) and a .tar.gz of it: the
    same name in results, the same checksum, the same pixels."""
    root, _ = image_folder
    (root / "README.md").write_text("# tiny images\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    archive = write_tar_gz(root, tmp_path / "tiny.tar.gz", arcname="tiny")
    folder, packed = memory.load(str(root)), memory.load(str(archive), data_dir=tmp_path / "d")
    assert folder.name == packed.name == "tiny" and folder.checksum == packed.checksum
    assert torch.equal(folder.train.images, packed.train.images) and torch.equal(folder.mean, packed.mean)


def test_known_content_carries_its_public_name_whatever_the_file_is_called(image_folder, tmp_path, monkeypatch):
    root, _ = image_folder
    archive = write_tar_gz(root, tmp_path / "renamed.tgz", arcname="elsewhere")
    monkeypatch.setitem(data.KNOWN_DATASETS, memory.load(str(root)).checksum, "Tiny (public copy)")
    assert memory.load(str(root)).name == "Tiny (public copy)"
    assert memory.load(str(archive), data_dir=tmp_path / "d").name == "Tiny (public copy)"
    assert data.dataset_name("x/Other.tar.gz", "unknown") == "Other" and data.dataset_name(".tar", "u") == ".tar"


def test_bundled_mini_cifar10_is_real_and_class_balanced():
    ds = memory.load("mini", data_dir="data")
    assert ds.name.startswith("CIFAR-10 mini (JPEG q75 copy")
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(ds.train.labels).tolist() == [500] * 10
    assert torch.bincount(ds.test.labels).tolist() == [100] * 10
    # Real photos, not noise: CIFAR-10's mean pixel is about (0.49, 0.48, 0.45).
    torch.testing.assert_close(ds.mean.mean((1, 2)), torch.tensor([0.49, 0.48, 0.45]), atol=0.03, rtol=0)


def test_torchvision_cifar10_path_downloads_verifies_and_loads(tmp_path, monkeypatch, http_dir):
    folder, url = http_dir
    tgz = folder / "cifar-10-python.tar.gz"
    written, md5s = write_cifar10_python_tgz(tgz)
    monkeypatch.setattr(datasets.CIFAR10, "url", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", hashlib.md5(tgz.read_bytes()).hexdigest())
    monkeypatch.setattr(
        datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": md5s["batches.meta"]})
    ds = memory.load("cifar10", data_dir=tmp_path / "data")
    assert ds.name == "CIFAR-10" and ds.num_classes == 10
    assert torch.equal(ds.train.images, torch.from_numpy(written["train"][0]).permute(0, 3, 1, 2))
    assert ds.test.labels.tolist() == written["test"][1].tolist()


def test_torchvision_checksum_mismatch_is_one_clear_error(tmp_path, monkeypatch, http_dir):
    folder, url = http_dir
    write_cifar10_python_tgz(folder / "cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets.CIFAR10, "url", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", "0" * 32)
    with pytest.raises(DataError, match="checksum mismatch"):
        memory.load("cifar10", data_dir=tmp_path / "data")


def test_offline_cifar10_says_what_was_tried_and_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://nonexistent.invalid/cifar-10-python.tar.gz")
    with pytest.raises(DataError) as e:
        memory.load("cifar10", data_dir=tmp_path)
    msg = str(e.value)
    assert (
        "could not get CIFAR-10" in msg and "nonexistent.invalid" in msg and "--data PATH" in msg and "--quick" in msg
    )


def test_missing_path_and_corrupt_archive(tmp_path, image_folder):
    with pytest.raises(DataError, match="does not exist"):
        memory.load(str(tmp_path / "nope.tar.gz"))
    root, _ = image_folder
    archive = write_tar_gz(root, tmp_path / "t.tar.gz", arcname="t")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt or unreadable archive"):
        memory.load(str(archive), data_dir=tmp_path / "d")


def test_wrong_size_too_few_classes_and_mismatched_classes(tmp_path):
    write_image_folder(tmp_path / "big", size=40)
    with pytest.raises(DataError, match="40x40.*32x32.*resize=true"):
        memory.load(str(tmp_path / "big"))
    assert memory.load(str(tmp_path / "big"), image_size=40).train.images.shape[1:] == (3, 40, 40)
    resized = memory.load(str(tmp_path / "big"), image_size=24, resize=True)
    assert resized.train.images.shape[1:] == (3, 24, 24) and resized.mean.shape == (3, 24, 24)
    write_image_folder(tmp_path / "one", classes=["cat"])
    with pytest.raises(DataError, match="at least 2"):
        memory.load(str(tmp_path / "one"))
    write_image_folder(tmp_path / "odd")
    shutil.rmtree(tmp_path / "odd" / "test" / "bird")
    with pytest.raises(DataError, match="test/ classes"):
        memory.load(str(tmp_path / "odd"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no train/"):
        memory.load(str(tmp_path / "empty"))


def test_undecodable_image_is_named(image_folder):
    root, _ = image_folder
    bad = root / "train" / "bird" / "9999.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="9999.png"):
        memory.load(str(root))


def test_val_split_is_fixed_and_disjoint(image_folder):
    root, _ = image_folder
    a, b = memory.load(str(root), val_size=4), memory.load(str(root), val_size=4)
    assert len(a.train) == 8 and len(a.test) == 4 and "8/4 train/val" in a.name
    assert torch.equal(a.test.images, b.test.images)
    full = memory.load(str(root))
    rows = {tuple(x.flatten().tolist()) for x in full.train.images}
    assert rows == {tuple(x.flatten().tolist()) for x in torch.cat([a.train.images, a.test.images])}
    torch.testing.assert_close(a.mean, a.train.images.float().mean(0) / 255)


def test_train_size_keeps_the_same_subset_for_every_seed(image_folder):
    root, _ = image_folder
    full, a, b = memory.load(str(root)), memory.load(str(root), train_size=5), memory.load(str(root), train_size=5)
    assert len(a.train) == 5 and torch.equal(a.train.images, b.train.images) and "5-image training subset" in a.name
    assert torch.equal(a.test.images, full.test.images)  # the test split is whole
    rows = {tuple(x.flatten().tolist()) for x in full.train.images}
    assert {tuple(x.flatten().tolist()) for x in a.train.images} < rows
    torch.testing.assert_close(a.mean, a.train.images.float().mean(0) / 255)
    with pytest.raises(DataError, match="train_size must be between 1 and 12, not 13"):
        memory.load(str(root), train_size=13)


def test_normalize_subtracts_the_per_pixel_mean():
    images = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).expand(1, 3, 1, 2)
    mean = torch.full((3, 1, 2), 0.5)
    torch.testing.assert_close(data.normalize(images, mean), torch.tensor([-0.5, 0.5]).expand(1, 3, 1, 2))


def test_augment_crops_and_flips_each_image_independently():
    torch.manual_seed(0)
    x = torch.randn(256, 3, 32, 32)
    out = memory.augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    found = set()
    for i in range(len(x)):  # every output is some crop of the padded image, flipped or not
        match = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (0, 1)
            if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy : dy + 32, dx : dx + 32]))
        ]
        assert match, i
        found.add(match[0])
    flips = sum(f for _, _, f in found)
    assert len(found) > 100 and 0.3 < flips / len(found) < 0.7
    # Seeded: the same generator state gives the same batch.
    assert torch.equal(out, memory.augment(x, torch.Generator().manual_seed(1)))


def test_augment_pads_an_eighth_of_the_size_by_default():
    x = torch.ones(64, 1, 16, 16)
    out = memory.augment(x, torch.Generator().manual_seed(0))
    # A crop offset by up to 2 pixels (16 / 8) leaves at most 2 zero rows or columns on a side.
    zero_rows = (out.sum(3) == 0).sum(2).max().item()
    assert zero_rows == 2 and out.shape == x.shape


def test_archive_members_with_absolute_or_parent_paths_are_refused(image_folder, tmp_path):
    import io
    import tarfile

    root, _ = image_folder
    archive = write_tar_gz(root, tmp_path / "evil.tar.gz", arcname="tiny")
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(archive, "w:gz") as tar:
        for m, payload in members:
            if m.isfile() and m.name.endswith("0000.png") and "/train/" in m.name:
                m.name = "../" + m.name  # outside the archive's tree, as a crafted archive may place it
            tar.addfile(m, io.BytesIO(payload) if payload is not None else None)
    with pytest.raises(DataError, match=r"member \.\./tiny/train/.* has an absolute or \.\./ path; refused"):
        memory.load(str(archive), data_dir=tmp_path / "d")


def test_a_cache_write_killed_midway_is_swept_when_the_cache_is_next_written(image_folder, tmp_path):
    root, _ = image_folder
    archive = write_tar_gz(root, tmp_path / "tiny.tar.gz", arcname="tiny")
    first = memory.load(str(archive), data_dir=tmp_path / "d")
    (cache,) = (tmp_path / "d" / "cache").glob("*.pt")
    stale = cache.with_name(f"{cache.name}.999999999.tmp")  # of a process that no longer exists
    stale.write_bytes(b"x" * 100)
    cache.unlink()
    assert memory.load(str(archive), data_dir=tmp_path / "d").checksum == first.checksum
    assert cache.exists() and not stale.exists()


def test_a_run_recorded_with_the_archive_reads_the_folder_when_only_that_is_there(image_folder, tmp_path):
    root, _ = image_folder
    archive = write_tar_gz(root, tmp_path / "tiny.tar.gz", arcname="tiny")
    packed = memory.load(str(archive), data_dir=tmp_path / "d")
    archive.rename(tmp_path / "elsewhere.tar.gz")  # only the folder is left
    assert memory.load(str(archive)).checksum == packed.checksum
    shutil.move(root, tmp_path / "gone")
    (tmp_path / "elsewhere.tar.gz").rename(archive)  # only the archive is left, asked for as the folder
    assert memory.load(str(root), data_dir=tmp_path / "d").checksum == packed.checksum
    archive.unlink()
    with pytest.raises(DataError, match="data not found"):
        memory.load(str(root))
