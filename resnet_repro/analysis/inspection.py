"""What a finished model does, loaded from a run's final.pt: Fig. 7 and predictions on test images.

Fig. 7's "std of layer responses": a layer's response is the output of the BN after one of its 3x3
convs (before the ReLU, and before the addition in a residual block), on the whole test set, with the
final weights in eval mode. For each channel, its standard deviation over all N*H*W values (the
population std, ddof=0); the layer's value is the mean of these over its channels.

Measures of a final.pt over a whole test set (Fig. 7's responses, `analysis evaluate`'s scores) are kept in
the run directory's measures.json, keyed by the md5 of final.pt and of the data, so that a redraw reads them.
"""

import argparse
import hashlib
import math
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from resnet_repro import data, files, models
from resnet_repro.analysis.figures import COLORS, finish, net_label
from resnet_repro.analysis.results import CannotDraw, require, select
from resnet_repro.config import spec_from_config
from resnet_repro.engine import rundir
from resnet_repro.engine.devices import default_device, device_error
from resnet_repro.files import DiskFull

FIG7_RUNS = ("plain20", "plain56", "resnet20", "resnet56", "resnet110")
MEASURES = "measures.json"  # in a run directory: Fig. 7's responses and test scores of its final.pt (see `cached`)


def layer_response_std(model, images, batch_size=500):
    """Fig. 7's std of each layer response (see the module doc), in `models.response_points` order.

    images: float (N, 3, H, W), already normalized. Puts the model in eval mode. One pass with running
    per-channel sums, in float64, so no activation is kept.
    """
    model.eval()
    device = next(model.parameters()).device
    names = models.response_points(model)
    sums = {n: [0.0, 0.0, 0] for n in names}  # per layer: sum, sum of squares (per channel), count

    def hook(name):
        def record(module, inputs, output):
            # Read now: the ReLU that follows is in place and overwrites `output`.
            x = output.detach().double().transpose(0, 1).flatten(1)  # (C, N*H*W)
            s = sums[name]
            s[0], s[1], s[2] = s[0] + x.sum(1), s[1] + (x * x).sum(1), s[2] + x.shape[1]

        return record

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                model(images[i : i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    stds = []
    for n in names:
        total, squares, count = sums[n]
        var = (squares / count - (total / count) ** 2).clamp_min(0)
        stds.append(var.sqrt().mean().item())
    return stds


def response_stds(df, device=None, runs=FIG7_RUNS, images=None):
    """{run: Series of layer_response_std indexed by module name} over the test set, for those of
    `runs` with a final.pt (see run_response_std). CannotDraw if none has one, or if the test data
    cannot be loaded. images: a dict shared with other calls, so that each test set is loaded once."""
    found = select(df, runs, prefer=("degradation", "depth"))
    require(found, runs, least="one")
    have = {n: Path(rows.path.iloc[0]) for n, rows in found.items() if (Path(rows.path.iloc[0]) / "final.pt").exists()}
    if not have:
        raise CannotDraw(f"missing final.pt: {', '.join(found)}")
    images = {} if images is None else images
    return {name: run_response_std(run_dir, device, images) for name, run_dir in have.items()}


def run_response_std(run_dir, device=None, images=None):
    """Fig. 7's layer_response_std of a run's final.pt over its test set (loaded as its config says), as a
    Series by module name. Kept in run_dir/measures.json and read from there while final.pt and the
    normalized test images are unchanged. images: {data source: (images, checksum)}, filled and reused."""
    device = device or default_device()
    model, config = load_finished(run_dir)
    x, checksum = _test_images(config, device, {} if images is None else images)
    compute = lambda: dict(zip(models.response_points(model), layer_response_std(model.to(device), x)))  # noqa: E731
    return pd.Series(cached(run_dir, checksum, device, "response_std", compute), dtype="float64")


def _test_images(config, device, images):
    """(the run's test images, normalized by its training mean, as one tensor; their md5), loaded once per source."""
    source = (data.data_key(spec_from_config(config)), config.get("data_dir", "data"))
    if source not in images:
        try:
            ds = test_data(config, device)
        except data.DataError as e:
            raise CannotDraw(f"no test data: {e}") from None
        x = torch.cat([x for x, _ in ds.test.eval_batches(ds.mean, 1000, device)])
        images[source] = x, tensor_md5(x)
    return images[source]


def tensor_md5(*tensors):
    """The md5 of the tensors' bytes: the checksum of the data a measure was computed on."""
    h = hashlib.md5()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached(run_dir, data_checksum, device, name, compute):
    """A measure of run_dir/final.pt on the data of `data_checksum`: from run_dir/measures.json if it was
    computed there for these weights (md5 of final.pt), this data and this kind of device; else compute()
    (a JSON value), kept there. A damaged measures.json is computed again; a read-only one is not written."""
    path = Path(run_dir) / MEASURES
    weights = files.md5_file(Path(run_dir) / "final.pt")
    try:
        store = rundir.read_json(path) if path.exists() else {}
    except rundir.RunDirError:
        store = {}
    if store.get("weights_md5") != weights or not isinstance(store.get("measures"), dict):
        store = {"weights_md5": weights, "measures": {}}
    entry = store["measures"].setdefault(f"{data_checksum}/{torch.device(device).type}", {})
    if name not in entry:
        entry[name] = compute()
        try:
            rundir.write_json(store, path)
        except (OSError, DiskFull):
            pass
    return entry[name]


def fig7(stds, title=""):
    """Fig. 7: std of layer responses per layer, in network order (top) and sorted descending (bottom).
    stds: {run name: list (or Series) of stds}, as from `response_stds`."""
    if not stds:
        raise CannotDraw(f"missing: {', '.join(FIG7_RUNS)}")
    fig = Figure(figsize=(6.5, 6))
    axes = fig.subplots(2, 1)
    for ax, order, xlabel in zip(
        axes, ("order", "sorted"), ("layer index (original)", "layer index (sorted by magnitude)")
    ):
        for name, values in stds.items():
            kind, depth = models.parse_name(name)
            ys = sorted(values, reverse=True) if order == "sorted" else list(values)
            style = dict(linestyle="--" if kind == "plain" else "-", linewidth=1.2)
            (line,) = ax.plot(range(1, len(ys) + 1), ys, color=COLORS.get(depth), label=net_label(name), **style)
            line.set_gid(f"{name}:{order}")
        ax.set(xlabel=xlabel, ylabel="std")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, None)
        ax.legend(fontsize="small", frameon=False, loc="best")
    return finish(fig, title)


RIGHT, WRONG = "black", "red"


def predict(model, images, mean, device="cpu", batch=1000):
    """The model's class for each uint8 image (N, 3, H, W), in eval mode: int64 (N,) on the CPU.
    mean: the training split's per-pixel mean, as `data.Dataset.mean`."""
    model = model.to(device).eval()
    mean = mean.to(device)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = data.normalize(images[i : i + batch].to(device), mean)
            out.append(model(x).argmax(1).cpu())
    return torch.cat(out)


def sample_indices(total, n, seed=0):
    """A fixed random choice of min(n, total) of `total` test images, in index order."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[:n].sort().values


def fig_predictions(images, labels, predictions, classes, title="", columns=8):
    """A grid of uint8 images (N, 3, H, W), each titled "predicted (true)"; wrong ones get a red title
    and a red frame. The suptitle gives `title` and the accuracy on these N images."""
    images = torch.as_tensor(images).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3) for imshow
    labels, predictions = torch.as_tensor(labels).tolist(), torch.as_tensor(predictions).tolist()
    assert len(images) == len(labels) == len(predictions) > 0, (len(images), len(labels), len(predictions))
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    fig = Figure(figsize=(1.6 * columns, 1.75 * rows + 0.5))
    for i, (image, label, pred) in enumerate(zip(images, labels, predictions)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        color = RIGHT if pred == label else WRONG
        ax.set_title(f"{classes[pred]} ({classes[label]})", color=color, fontsize=8)
        for spine in ax.spines.values():
            spine.set(color=color, linewidth=3 if pred != label else 0.5)
    correct = sum(p == t for p, t in zip(predictions, labels))
    score = (
        f"predicted (true), mistakes in red: {correct}/{len(labels)} right ({100 * correct / len(labels):.1f}%) "
        "on these images"
    )
    return finish(fig, "\n".join(filter(None, [title, score])))


def load_finished(run_dir):
    """(model, config) of a finished run from its final.pt; ValueError saying why there is none."""
    path = Path(run_dir) / "final.pt"
    if not path.exists():
        state = rundir.read_status(run_dir, absent="not started")["state"]
        if state == "done":  # committed results keep the CSV and config, not always the weights
            raise CannotDraw(f"{run_dir} has no final.pt: the run is done but its weights are not here; train it again")
        raise CannotDraw(f"{run_dir} has no final.pt: the run is not finished (state: {state})")
    try:
        state, config, _ = models.read_weights(path)
    except ValueError as e:  # NotLoadable included: not plain weights
        raise CannotDraw(str(e)) from None
    if config is None:
        raise CannotDraw(f"{path}: weights without the run's config, not a final.pt of this suite")
    model = models.build_model(config["model"], config["num_classes"], config.get("shortcut"), config.get("stem"))
    model.load_state_dict(state)
    return model, config


def test_data(config, device="cpu"):
    """The test data a finished run was evaluated on, as its config says (DataError if it cannot be loaded)."""
    return data.load_for(spec_from_config(config), config.get("data_dir", "data"), device)


def predictions(run_dir, n=32, seed=0, device="cpu"):
    """A finished run's predictions on a fixed sample of n test images: (figure, right, shown, default file name)."""
    model, config = load_finished(run_dir)
    ds = test_data(config)
    index = sample_indices(len(ds.test), n, seed)
    images, labels = ds.test.sample(index)
    predicted = predict(model, images, ds.mean, device)
    experiment, run = config.get("experiment", Path(run_dir).parent.name), config.get("run", Path(run_dir).name)
    title = (
        f"{experiment}/{run}: {net_label(config['model'])} on {config.get('dataset', ds.name)}, {len(index)} of "
        f"{len(ds.test)} test images (seed {seed})"
    )
    fig = fig_predictions(images, labels, predicted, ds.classes, title)
    # named by the result root too (results/cpu-8k -> "cpu-8k-"): the same run of two roots never shares a file
    root = Path(run_dir).resolve().parent.parent
    prefix = "" if root == Path("results").resolve() else f"{root.name}-"
    return fig, int((predicted == labels).sum()), len(index), f"predictions-{prefix}{experiment}-{run}.png"


PREDICTIONS_EXAMPLES = """examples:
  uv run python -m resnet_repro.analysis predictions results/degradation/resnet56
  uv run python -m resnet_repro.analysis predictions results/degradation-quick/resnet20 --n 16 --out pred.png

Loads RUN_DIR/final.pt (written when the run is done) and the run's test data, predicts a fixed random
sample of test images (the same ones for every run with the same --seed and test set) and draws them
titled "predicted (true)", mistakes in red.
"""


def predictions_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnet_repro.analysis predictions",
        description="Draw a finished run's predictions on a fixed sample of test images.",
        epilog=PREDICTIONS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run directory, e.g. results/degradation/resnet56"
    )
    parser.add_argument(
        "--out", type=Path, help="PNG to write (default: figures/predictions-[<root>-]<experiment>-<run>.png)"
    )
    parser.add_argument("--n", type=int, default=32, help="images to show (default: 32, as 4 rows of 8)")
    parser.add_argument("--seed", type=int, default=0, help="which test images (default: 0)")
    parser.add_argument("--device", default="cpu", help="device for the forward pass (default: cpu)")
    args = parser.parse_args(argv)
    if error := device_error(args.device):
        parser.exit(2, f"error: {error}\n")
    if args.n < 1:
        parser.exit(2, f"error: --n must be at least 1, not {args.n}\n")
    if not args.run_dir.is_dir():
        parser.exit(2, f"error: {args.run_dir}: no such run directory\n")
    try:
        fig, correct, shown, out = predictions(args.run_dir, args.n, args.seed, args.device)
    except (ValueError, data.DataError) as e:  # RunDirError and CannotDraw are ValueErrors
        parser.exit(2, f"error: {e}\n")
    out = args.out or Path("figures") / out
    out.parent.mkdir(parents=True, exist_ok=True)
    files.save_figure(fig, out, dpi=150)
    print(f"{out}: {correct}/{shown} right")
    return 0
