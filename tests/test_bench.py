import csv

import pytest
import torch

from conftest import write_image_folder, write_jpeg_folder
from resnet_repro import bench
from resnet_repro.config import TrainSpec
from resnet_repro.data import memory, stream
from resnet_repro.engine import usual

SHORT = "--models resnet8 --iterations 3 --warmup 1 --device cpu --workers 0".split()  # a few timed steps


def test_bench_measures_both_paths_and_appends_a_csv(tmp_path, capsys):
    write_image_folder(tmp_path / "tiny", n_train=48, n_test=12)
    argv = [
        *SHORT,
        "--batch",
        "8",
        "--data",
        str(tmp_path / "tiny"),
        "--check-iterations",
        "4",
        "--out",
        str(tmp_path / "bench"),
    ]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "check after 4 iterations from one seed" in out and "noise bound" in out
    (check,) = [line for line in out.splitlines() if "check after" in line]
    assert check.split()[:4] == ["resnet8", "check", "after", "4"] and check.endswith(
        ("within noise", "NOT within noise")
    )
    (path,) = (tmp_path / "bench").glob("cpu-*.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["usual", "engine"] and {r["model"] for r in rows} == {"resnet8"}
    assert all(float(r["images_per_second"]) > 0 and r["device"] == "cpu" and r["torch"] for r in rows)
    usual, engine = (float(r["images_per_second"]) for r in rows)
    slack = 0.005 + engine / usual * (
        0.05 / engine + 0.05 / usual
    )  # the rates are rounded to 0.1 before they are written
    assert abs(float(rows[1]["speedup"]) - engine / usual) <= slack
    assert bench.main(argv[:-2] + ["--check-iterations", "0", "--out", str(tmp_path / "bench")]) == 0
    with open(path) as f:
        assert len(list(csv.DictReader(f))) == 4  # appended, never overwritten


def test_bench_processes_sums_the_processes_training_at_once(tmp_path, capsys):
    argv = [*SHORT, "--batch", "8", "--data", "mini", "--processes", "2", "--out", str(tmp_path / "bench")]
    assert bench.main(argv) == 0
    (path,) = (tmp_path / "bench").glob("cpu-*.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    threads = torch.get_num_threads()
    paths = [f"engine 1x{threads} threads", f"engine 2x{max(1, threads // 2)} threads"]
    assert [r["path"] for r in rows] == paths and {r["model"] for r in rows} == {"resnet8"}
    alone, together = (float(r["images_per_second"]) for r in rows)
    assert alone > 0 and together > 0 and float(rows[1]["speedup"]) == pytest.approx(together / alone, abs=0.01)
    assert paths[1] in capsys.readouterr().out


@pytest.mark.parametrize("extra", [["--processes", "1"], ["--processes", "2", "--loader", "stream"]])
def test_bench_processes_needs_two_on_the_cpu(extra, capsys):
    assert bench.main([*SHORT, *extra]) == 2
    assert "--processes" in capsys.readouterr().err


def test_usual_loader_yields_what_torchvision_cifar_would(tmp_path):
    write_image_folder(tmp_path / "tiny", n_train=16, n_test=4)
    ds = memory.load(str(tmp_path / "tiny"))
    loader, normalize = usual.usual_loader(ds, TrainSpec(batch_size=4), workers=0, device=torch.device("cpu"))
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Normalized per channel with the training split's statistics: roughly zero mean, unit std overall.
    whole = torch.cat([b for b, _ in loader])
    assert abs(whole.mean().item()) < 0.3 and 0.6 < whole.std().item() < 1.4


def test_bench_streams_a_jpeg_folder_with_both_loops(tmp_path, capsys):

    write_jpeg_folder(tmp_path / "jpeg", n_train=24, n_val=6)
    argv = [*SHORT, "--loader", "stream", "--image-size", "32", "--batch", "6", "--data", str(tmp_path / "jpeg")]
    argv += ["--out", str(tmp_path / "bench")]
    assert bench.main(argv) == 0
    assert "data only" in capsys.readouterr().out
    (path,) = (tmp_path / "bench").glob("cpu-*.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["path"]) for r in rows] == [
        ("-", "usual-data"),
        ("-", "engine-data"),
        ("resnet8", "usual"),
        ("resnet8", "engine"),
    ]
    assert all(float(r["images_per_second"]) > 0 and r["batch"] == "6" for r in rows)


def test_usual_imagenet_loader_is_random_resized_crops(tmp_path):

    write_jpeg_folder(tmp_path / "jpeg", n_train=12, n_val=3)
    ds = stream.load(str(tmp_path / "jpeg"), tmp_path / "data", crop=32, test_resize=37, scale=(37, 69))
    spec = TrainSpec(model="resnet18", batch_size=4, loader="stream", image_size=32, test_resize=37, scale=(37, 69))
    loader, _ = usual.usual_loader(ds, spec, workers=0, device=torch.device("cpu"))
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.manual_seed(0)
    first = torch.cat([b for b, _ in loader])
    torch.manual_seed(1)
    second = torch.cat([b for b, _ in loader])
    assert not torch.equal(first, second)  # random crops: another draw, other pixels
    names = [type(t).__name__ for t in loader.dataset.transform.transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]


@pytest.mark.parametrize(
    "argv,match",
    [
        ("--iterations 0", "--iterations must be at least 1, not 0"),
        ("--iterations -3", "--iterations must be at least 1, not -3"),
        ("--batch 0", "--batch must be at least 1"),
        ("--warmup -1", "--warmup must be at least 0"),
        ("--models ,", "name the nets, comma-separated"),
        ("--models resnet7", "unknown model 'resnet7'"),
        ("--device foo", "--device foo: foo is not a device"),
        ("--device cuda:9", "no such CUDA GPU here"),
        ("--batch 100000 --iterations 1", "--batch 100000 is more than the 5,000 training images"),
    ],
)
def test_bench_options_it_cannot_measure_are_one_line(argv, match, tmp_path, capsys):
    assert bench.main([*argv.split(), "--data", "mini", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and not list(tmp_path.iterdir())
