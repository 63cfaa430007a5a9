"""python -m resnet_repro.analysis evaluate: test error, loss and top-5 error of weights on a test set.

Weights: our final.pt or checkpoint.pt (the run's config names the net and its data), a torchvision-layout
state dict, or a checkpoint of the common CIFAR re-implementations ({"state_dict": ..., "best_prec1": ...},
`module.` prefix, `linear` head; see models.convert_cifar_state_dict). Files are read with
torch.load(weights_only=True) only: tensors, numbers, strings and containers of them, never code.

Normalization, as each net was trained: our runs subtract the per-pixel mean of their own training images
("run"); foreign weights need theirs named: "imagenet-channel" (mean 0.485, 0.456, 0.406 and std 0.229,
0.224, 0.225 per channel: torchvision's and the common CIFAR re-implementations'), "pixel-mean" (the
evaluated data's per-pixel training mean, as this suite trains) or "M,M,M/S,S,S" (per-channel mean/std).
A run's final.pt scores are kept in its measures.json (see inspection.cached): a second evaluate reads them.
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from resnet_repro import data, files, models
from resnet_repro.analysis import inspection
from resnet_repro.config import SpecError, TrainSpec, spec_from_config
from resnet_repro.engine import metrics, provenance
from resnet_repro.engine.devices import device_error, device_name
from resnet_repro.engine.recipe import evaluate  # the engine's own test pass: the CSV's numbers

IMAGENET_CHANNEL = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALIZATIONS = ("run", "pixel-mean", "imagenet-channel", "M,M,M/S,S,S")
CSV = Path("evaluations.csv")  # the current folder: the committed figures/evaluations.csv changes only when named
CSV_COLUMNS = [
    "weights",
    "weights_md5",
    "model",
    "data",
    "dataset",
    "test_images",
    "normalize",
    "test_loss",
    "test_err",
    "top5_err",
    "run_last_test_err",
    "device",
    "torch",
    "commit",
]


class WeightsError(ValueError):
    """Weights that cannot be read or do not fit; the message says why, in one line."""


def read_weights(path):
    """models.read_weights, WeightsError naming a missing file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return models.read_weights(path)
    except ValueError as e:  # NotLoadable too
        raise WeightsError(str(e)) from None


def build(state, config, name):
    """The net of `state`: the run's (config) or `name` with as many classes as the weights have."""
    if config and name and name != config["model"]:
        raise WeightsError(f"--model {name}, but the run's config says {config['model']}")
    if not config and not name:
        raise WeightsError(
            "the weights carry no config: name the net with --model (plain and residual nets have the same parameters)"
        )
    if config:
        model = models.build_model(config["model"], config["num_classes"], config.get("shortcut"), config.get("stem"))
    else:
        classes = state["fc.weight"].shape[0] if "fc.weight" in state else 10
        model = models.build_model(name, classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        wrong = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        raise WeightsError(f"the weights do not fit {config['model'] if config else name}: {', '.join(wrong)}")
    return model


def data_spec(config, name, source):
    """The TrainSpec whose test split is evaluated: the run's own (its data, or `source` in its place),
    or for foreign weights `source` at the net's input size."""
    if config:
        spec = spec_from_config(config)
        return spec if source in (None, spec.data) else replace(spec, data=source, val_size=0, train_size=0)
    if source is None:
        raise WeightsError("the weights carry no config: name the test data with --data")
    size = models.input_size(name)
    return TrainSpec(model=name, data=source, image_size=size, resize=size != 32)


def normalization(how, config, ds, data_dir, device, own_mean=None):
    """(mean, std or None, its description) of the normalization `how` (see the module doc). own_mean: the
    run's per-pixel mean as its weights carry it; weights written before they carried it need the run's data."""
    if how == "run":
        if not config:
            raise WeightsError(
                "--normalize run needs our final.pt or checkpoint.pt; name how these weights were trained"
            )
        if own_mean is not None:
            return own_mean, None, f"per-pixel mean of {config['dataset']} (the run's)"
        own = inspection.test_data(config | {"data_dir": data_dir}) if config["data"] != ds.source else ds
        return own.mean, None, f"per-pixel mean of {own.name} (the run's)"
    if how == "pixel-mean":
        return ds.mean, None, f"per-pixel mean of {ds.name}"
    try:
        mean, std = (
            IMAGENET_CHANNEL if how == "imagenet-channel" else [list(map(float, p.split(","))) for p in how.split("/")]
        )
        assert len(mean) == len(std) == 3 and min(std) > 0
    except (ValueError, AssertionError):
        raise WeightsError(f"--normalize {how!r}: valid are {', '.join(NORMALIZATIONS)}") from None
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float32).view(3, 1, 1)  # noqa: E731
    return as_tensor(mean), as_tensor(std), f"per-channel mean {tuple(mean)}, std {tuple(std)}"


class Standardize(nn.Module):
    """Divides the mean-subtracted input by a per-channel std before the net (the std half of a normalization)."""

    def __init__(self, std):
        super().__init__()
        self.register_buffer("std", std)

    def forward(self, x):
        return x / self.std


def data_checksum(ds, mean, std):
    """The md5 of what the net sees: the test images and labels (a stream split: the data's checksum) and the
    normalization."""
    test = [ds.test.images, ds.test.labels] if hasattr(ds.test, "images") else [torch.tensor([len(ds.test)])]
    return ("" if hasattr(ds.test, "images") else ds.checksum + "-") + inspection.tensor_md5(
        *test, mean, *([] if std is None else [std])
    )


def evaluate_weights(weights, source=None, name=None, data_dir=None, normalize=None, device="cpu"):
    """(a row of CSV_COLUMNS, the line that says it): the weights at `weights` (a path, or a URL downloaded
    once into <data_dir>/weights/) on the test split of `source` (default: the run's data). A run's final.pt
    scores are read from its measures.json when there."""
    path = files.fetch_weights(weights, Path(data_dir or "data") / "weights")
    state, config, own_mean = read_weights(path)
    model = build(state, config, name)
    name = config["model"] if config else name
    spec = data_spec(config, name, source)
    data_dir = data_dir or (config or {}).get("data_dir", "data")
    ds = data.load_for(spec, data_dir, device)
    if ds.num_classes != model.fc.out_features:
        raise WeightsError(f"the weights have {model.fc.out_features} classes, {ds.name} has {ds.num_classes}")
    if not (normalize or config):
        raise WeightsError(
            "name how these weights were trained to normalize their input: --normalize, one of "
            f"{', '.join(NORMALIZATIONS)}"
        )
    mean, std, described = normalization(normalize or "run", config, ds, data_dir, device, own_mean)
    net = model if std is None else nn.Sequential(Standardize(std), model)
    net = net.to(device, memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)
    computed = []  # empty when the scores were read from measures.json

    def score():
        computed.append(True)
        return dict(zip(("test_loss", "test_err", "top5_err"), evaluate(net, ds.test, mean.to(device), spec, device)))

    if config and path.name == "final.pt":
        scores = inspection.cached(path.parent, data_checksum(ds, mean, std), device, "test", score)
    else:
        scores = score()
    row = {
        "weights": str(weights),
        "weights_md5": files.md5_file(path),
        "model": name,
        "data": spec.data,
        "dataset": ds.name,
        "test_images": len(ds.test),
        "normalize": normalize or "run",
        **{k: round(v, 6) for k, v in scores.items()},
        "run_last_test_err": last_test_err(path, config, spec),
        "device": device_name(device),
        "torch": str(torch.__version__),
        "commit": provenance.git_commit(),
    }
    line = (
        f"{weights}: {name} on {ds.name}, {len(ds.test):,} test images, {described}: test error "
        f"{row['test_err']:.2f}%, "
        f"loss {row['test_loss']:.4f}, top-5 error {row['top5_err']:.2f}% ({row['device']}"
        f"{'' if computed else ', read from measures.json'})"
    )
    if row["run_last_test_err"] != "":
        line += f"; the run's metrics.csv ends at {row['run_last_test_err']:.2f}%"
    return row, line


def last_test_err(path, config, spec):
    """The last test error in the run's metrics.csv when the weights are a run's, on its own test data; else ""."""
    csv_path = Path(path).parent / "metrics.csv"
    if not config or spec.data != config["data"] or not csv_path.exists():
        return ""
    rows = metrics.read_metrics(csv_path)
    return rows[-1]["test_err"] if rows else ""


def append_row(row, path):
    """Append the row to the CSV at `path`, with the header when the file is new (files.append_csv)."""
    try:
        files.append_csv(path, CSV_COLUMNS, [row])
    except files.HeaderMismatch:
        raise WeightsError(f"{path} has other columns than an evaluations CSV; pass another --csv") from None


EXAMPLES = """examples:
  uv run python -m resnet_repro.analysis evaluate results/cpu-8k/degradation/resnet20/final.pt
  uv run python -m resnet_repro.analysis evaluate \\
      https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet20-12fca82f.th \\
      --model resnet20 --data data/CIFAR-10-images --normalize imagenet-channel

A URL is downloaded once into --data-dir/weights/ (the sha256 prefix in its file name is checked).
Prints one line (test error, loss, top-5 error, and for a run's weights the last test error of its
metrics.csv) and appends a row to --csv. Normalization: a run's own per-pixel mean ("run", the default
for our final.pt and checkpoint.pt); foreign weights must name theirs: imagenet-channel, pixel-mean
(the evaluated data's per-pixel mean) or M,M,M/S,S,S. Files are read as data only (weights_only).
"""


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnet_repro.analysis evaluate",
        description="Test error, loss and top-5 error of weights on a test set.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("weights", metavar="WEIGHTS", help="final.pt, checkpoint.pt, a state dict file, or its URL")
    parser.add_argument("--data", help="test data: cifar10, cifar100, mini or a path (default: the run's data)")
    parser.add_argument("--model", help="the net, e.g. resnet20 (needed for weights without a run's config)")
    parser.add_argument("--data-dir", help="downloads and decoded archives (default: the run's data_dir, else data)")
    parser.add_argument("--normalize", help=f"one of {', '.join(NORMALIZATIONS)} (default for a run's weights: run)")
    parser.add_argument("--device", default="cpu", help="device for the forward pass (default: cpu)")
    parser.add_argument("--csv", type=Path, default=CSV, help=f"CSV the row is appended to (default: {CSV})")
    args = parser.parse_args(argv)
    if error := device_error(args.device):
        parser.exit(2, f"error: {error}\n")
    start = time.perf_counter()
    try:
        row, line = evaluate_weights(args.weights, args.data, args.model, args.data_dir, args.normalize, args.device)
        append_row(row, args.csv)
    except (ValueError, data.DataError, SpecError) as e:  # WeightsError is a ValueError
        parser.exit(2, f"error: {e}\n")
    print(f"{line} [{time.perf_counter() - start:.1f} s; row appended to {args.csv}]")
    return 0
