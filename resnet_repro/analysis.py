"""Results -> the paper's figures and tables.

Reads what the training engine writes into every run directory `results/<experiment>/<run>/`:
`metrics.csv` (one row per epoch), `config.json`, `status.json` (optional) and, for Fig. 7 only,
`final.pt`. Nothing here trains or changes a run.

- `load_runs(*paths)`: every run under the paths as one tidy frame, one row per run and epoch.
  A malformed file raises ValueError naming the file and line. A run directory with a config but no
  epoch yet (just started, or failed before its first epoch) is left out with a warning, so the
  figures list it as missing.
- `final_metrics(df)`, `compare(a, b)`: one row per run; two result sets side by side.
- `fig1`, `fig4`, `fig6`, `fig7`, `fig_depth`: one matplotlib Figure each, drawn like the paper's.
- `table6`, `table2`, `summary_table`: DataFrames; `table.attrs["note"]` says what ours are.
- `draw(paths, out_dir)`: all of the above that the runs allow, as PNG, PDF, Markdown and CSV.
- `fig_predictions`, `predict`: one finished run's predictions on a fixed sample of test images, as a
  grid titled "predicted (true)" with the mistakes in red (`python -m resnet_repro.analysis predictions RUN_DIR`).

Runs are found by their run name (`plain20`, `resnet110`, ...). Within one drawing each name must
belong to one run directory; `draw` draws quick runs (config `quick`) apart, into `out_dir/quick`.

Fig. 7's "std of layer responses": a layer's response is the output of the BN after one of its 3x3
convs (before the ReLU, and before the addition in a residual block), on the whole test set, with the
final weights in eval mode. For each channel, its standard deviation over all N*H*W values (the
population std, ddof=0); the layer's value is the mean of these over its channels.
"""

import argparse
import csv
import io
import json
import math
import sys
import textwrap
import warnings
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from resnet_repro import data, models
from resnet_repro.checkpoint import live_state

# metrics.csv columns (an API shared with train.py) and how to parse them
CSV_COLUMNS = {
    "experiment": str, "run": str, "model": str, "depth": int, "residual": bool, "epoch": float,
    "iteration": int, "lr": float, "train_loss": float, "train_err": float, "test_loss": float,
    "test_err": float, "epoch_seconds": float, "images_per_second": float,
}
# config.json keys joined onto every row; seed and params may be absent (nullable ints)
CONFIG_COLUMNS = {
    "dataset": "object", "shortcut": "object", "stem": "object", "params": "Int64", "quick": "bool",
    "seed": "Int64", "device": "object", "torch": "object", "commit": "object",
}
# evaluation.json (the 10-crop test at the end of a run with ten_crop) joined onto every row; NaN without one
EVALUATION_COLUMNS = {"top1_err_10crop": "top1_err", "top5_err_10crop": "top5_err"}
DTYPES = {c: {str: "object", int: "int64", bool: "bool", float: "float64"}[t] for c, t in CSV_COLUMNS.items()}
DTYPES |= CONFIG_COLUMNS | {c: "float64" for c in EVALUATION_COLUMNS} | {"state": "object", "path": "object"}

# The paper's numbers: Table 6 (CIFAR-10 test error, ResNets) and Table 2 (ImageNet top-1, 10-crop).
PAPER_TABLE6 = {20: (0.27e6, 8.75), 32: (0.46e6, 7.51), 44: (0.66e6, 7.17), 56: (0.85e6, 6.97), 110: (1.7e6, 6.43), 1202: (19.4e6, 7.93)}
PAPER_TABLE2 = {18: (27.94, 27.88), 34: (28.54, 25.03)}  # layers: (plain, ResNet)

FIG1_RUNS = ("plain20", "plain56")
FIG4_PANELS = (("plain18", "plain34"), ("resnet18", "resnet34"))
FIG6_PANELS = (
    ("plain20", "plain32", "plain44", "plain56"),
    ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
    ("resnet110", "resnet1202"),
)
DEPTH_EXPERIMENTS = ("depth", "resnet1202", "degradation")  # where Fig. 6, Table 6 and the depth figure take a run from
FIG7_RUNS = ("plain20", "plain56", "resnet20", "resnet56", "resnet110")
COLORS = {18: "tab:blue", 20: "#e8a30c", 32: "c", 34: "tab:red", 44: "g", 56: "r", 110: "k", 1202: "m"}
TRAIN_DASHED = dict(linestyle="--", linewidth=1.0)  # Fig. 6: dashed training error
TRAIN_THIN = dict(linestyle="-", linewidth=0.8)  # Fig. 4: thin training error
TEST_BOLD = dict(linestyle="-", linewidth=2.2)


class CannotDraw(ValueError):
    """A figure or table cannot be drawn from these runs; the message says why ("missing: plain20")."""


# --- loading -----------------------------------------------------------------------------------


def load_runs(*paths):
    """Every run under `paths` (results roots, experiment dirs or run dirs, searched recursively),
    one row per run and epoch: the metrics.csv columns, then CONFIG_COLUMNS from config.json,
    EVALUATION_COLUMNS from evaluation.json (NaN without one), `state` from status.json ("unknown"
    without one) and `path`, the run directory."""
    run_dirs = {}  # resolved -> as given, so overlapping paths give each run once
    for p in map(Path, paths or ["results"]):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        for f in sorted([*p.rglob("metrics.csv"), *p.rglob("config.json")]):
            run_dirs.setdefault(f.parent.resolve(), f.parent)
    frames = []
    for run_dir in run_dirs.values():
        frame = _load_run(run_dir)
        if frame is not None:
            frames.append(frame)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in DTYPES.items()})
    df = pd.concat(frames, ignore_index=True).astype(DTYPES)
    return df.sort_values(["experiment", "residual", "depth", "run", "path", "epoch"], ignore_index=True)


def _load_run(run_dir):
    config_path, csv_path = run_dir / "config.json", run_dir / "metrics.csv"
    if not config_path.exists():
        raise ValueError(f"{csv_path}: no config.json next to it (the engine writes both)")
    config = _read_json(config_path)
    if "run" not in config:
        return None  # a config.json that is not a run's (say an experiment's spec)
    rows = read_metrics(csv_path) if csv_path.exists() else []
    state = _run_state(run_dir)
    for key, kind in CONFIG_COLUMNS.items():
        value = config.get(key)
        expected = {"Int64": int, "bool": bool}.get(kind)
        if value is not None and expected and (type(value) is not expected):
            raise ValueError(f"{config_path}: {key} must be {'an integer' if expected is int else 'true or false'}, not {value!r}")
    if not rows:
        warnings.warn(f"{run_dir}: no epoch in metrics.csv yet (state: {state}); left out", stacklevel=3)
        return None
    df = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    for key in CONFIG_COLUMNS:
        df[key] = config.get(key, False if key == "quick" else None)
    evaluation = _read_json(run_dir / "evaluation.json") if (run_dir / "evaluation.json").exists() else {}
    for column, key in EVALUATION_COLUMNS.items():
        df[column] = evaluation.get(key, math.nan)
    df["state"] = state
    df["path"] = str(run_dir)
    return df


def _run_state(run_dir, absent="unknown"):
    """status.json's state as it stands (checkpoint.live_state: a dead "running" run is "stopped")."""
    path = run_dir / "status.json"
    return live_state(run_dir, _read_json(path).get("state", "unknown") if path.exists() else absent)


def _read_text(path):
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); damaged or not written by this suite") from None


def _read_json(path):
    try:
        obj = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_metrics(path):
    """metrics.csv -> list of typed rows ({column: value}, CSV_COLUMNS only). Raises ValueError naming the
    file and line for missing columns, a short or unparsable line, a cut-off last line, or epochs out
    of order. Extra columns are ignored. An empty or header-only file gives []."""
    text = _read_text(path)
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return []
    header = lines[0]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}, line 1: missing columns {', '.join(missing)} (header: {','.join(header)})")
    if not text.endswith("\n"):
        raise ValueError(f"{path}, line {len(lines)}: cut off (no newline at its end); truncated or still being written")
    index = {c: header.index(c) for c in CSV_COLUMNS}
    rows, last_epoch = [], None
    for lineno, fields in enumerate(lines[1:], start=2):
        if len(fields) != len(header):
            raise ValueError(f"{path}, line {lineno}: {len(fields)} fields, expected {len(header)} (truncated or malformed)")
        row = {c: _parse(fields[index[c]], t, f"{path}, line {lineno}, column {c}") for c, t in CSV_COLUMNS.items()}
        if last_epoch is not None and row["epoch"] <= last_epoch:
            raise ValueError(f"{path}, line {lineno}: epoch {row['epoch']:g} after epoch {last_epoch:g} (expected rows in order)")
        last_epoch = row["epoch"]
        rows.append(row)
    runs = {r["run"] for r in rows}
    if len(runs) > 1:
        raise ValueError(f"{path}: rows of several runs ({', '.join(sorted(runs))})")
    return rows


def _parse(value, kind, where):
    try:
        if kind is bool:
            return {"true": True, "false": False}[value.strip().lower()]
        return kind(value)
    except (KeyError, ValueError):
        expected = {bool: "True or False", int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise ValueError(f"{where}: {value!r} is not {expected}") from None


# --- per-run numbers ---------------------------------------------------------------------------


def final_metrics(df):
    """One row per run: its last epoch's training and test error, its best test error, wall time."""
    rows = []
    for path, run in df.groupby("path", sort=False):
        last = run.loc[run.epoch.idxmax()]
        rows.append({
            "experiment": last.experiment, "run": last.run, "model": last.model, "depth": last.depth,
            "residual": last.residual, "params": last.params, "final_train_err": last.train_err,
            "final_test_err": last.test_err, "best_test_err": run.test_err.min(),
            "minutes": run.epoch_seconds.sum() / 60, "iterations": last.iteration, "epochs": last.epoch,
            "state": last.state, "quick": last.quick, "seed": last.seed, "device": last.device,
            "commit": last.commit, "path": path,
        })
    columns = ["experiment", "run", "model", "depth", "residual", "params", "final_train_err", "final_test_err",
               "best_test_err", "minutes", "iterations", "epochs", "state", "quick", "seed", "device", "commit", "path"]
    dtypes = {"depth": "int64", "residual": "bool", "params": "Int64", "iterations": "int64", "epochs": "float64",
              "quick": "bool", "seed": "Int64"}
    for c in ("final_train_err", "final_test_err", "best_test_err", "minutes"):
        dtypes[c] = "float64"
    return pd.DataFrame(rows, columns=columns).astype(dtypes)


def compare(a, b):
    """Two result sets (frames from load_runs, or paths) side by side, matched by run name.
    `<metric>_a`, `<metric>_b` and `<metric>_diff` (= b - a); a run in only one set has NaN on the other side."""
    finals = []
    for name, runs in (("a", a), ("b", b)):
        final = final_metrics(runs if isinstance(runs, pd.DataFrame) else load_runs(runs))
        twice = final.run[final.run.duplicated()].unique()
        if len(twice):
            raise ValueError(f"result set {name} has several runs named {', '.join(twice)}; load one experiment per set")
        finals.append(final)
    keys = ["run", "model", "depth", "residual"]
    metrics = ["final_train_err", "final_test_err", "best_test_err", "minutes", "iterations"]
    context = ["seed", "device", "commit", "state", "path"]
    out = pd.merge(finals[0][keys + metrics + context], finals[1][keys + metrics + context], on=keys,
                   how="outer", suffixes=("_a", "_b"))
    for m in metrics:
        out[f"{m}_diff"] = out[f"{m}_b"] - out[f"{m}_a"]
    columns = keys + [f"{m}_{s}" for m in metrics for s in ("a", "b", "diff")] + [f"{c}_{s}" for c in context for s in ("a", "b")]
    return out[columns].sort_values(["residual", "depth", "run"], ignore_index=True)


# --- figures -----------------------------------------------------------------------------------


def _rank(experiment, prefer):
    base = experiment.removesuffix("-quick")
    return prefer.index(base) if base in prefer else len(prefer)


def _select(df, names, prefer=()):
    """{name: its rows by epoch} for the runs of `names` in df. A name run by several experiments is taken
    from the first of `prefer` (e.g. plain20 of `degradation` for Fig. 1, of `depth` for Fig. 6);
    CannotDraw if that leaves several runs (say two seeds of one experiment)."""
    out = {}
    for name in names:
        rows = df[df.run == name]
        ranked = sorted((_rank(experiment, prefer), path) for path, experiment in rows.groupby("path").experiment.first().items())
        if len(ranked) > 1 and ranked[0][0] == ranked[1][0]:
            raise CannotDraw(f"ambiguous: {name} in {', '.join(path for _, path in ranked)}; draw one result set at a time")
        if ranked:
            out[name] = rows[rows.path == ranked[0][1]].sort_values("epoch")
    return out


def _require(found, names, least="all"):
    missing = [n for n in names if n not in found]
    if (least == "all" and missing) or not found:
        raise CannotDraw(f"missing: {', '.join(missing)}")


def _label(name, state=None):
    kind, depth = models.parse_name(name)
    label = f"{'ResNet' if kind == 'resnet' else 'plain'}-{depth}"
    return f"{label} ({state})" if state in ("running", "failed", "interrupted") else label


def _title(df, *parts):
    """The figure's title: `parts`, and a warning that quick runs are not the paper's setting."""
    quick = df[df.quick]
    if len(quick):
        parts += (f"quick run: {', '.join(quick.dataset.dropna().unique()) or 'small data'}, short schedule",)
    return "; ".join(parts)


def _iterations(runs):
    """The x-axis of curves: the paper's "iter. (1e4)", or plain iterations for runs shorter than 10k."""
    longest = max(rows.iteration.max() for rows in runs.values())
    return (1e4, "iter. (1e4)") if longest >= 1e4 else (1, "iterations")


def _curve(ax, rows, column, style, label=None, scale=1e4):
    kind, depth = models.parse_name(rows.run.iloc[0])
    (line,) = ax.plot(rows.iteration / scale, rows[column], color=COLORS.get(depth), label=label, **style)
    line.set_gid(f"{rows.run.iloc[0]}:{column.split('_')[0]}")  # "plain20:train", read back by the tests


def _legend(ax, train_style=None, train="train", test="test"):
    handles, labels = ax.get_legend_handles_labels()
    if train_style:  # a key to the line styles after the nets
        handles += [Line2D([], [], color="gray", **train_style), Line2D([], [], color="gray", **TEST_BOLD)]
        labels += [train, test]
    ax.legend(handles, labels, fontsize="small", frameon=False, loc="best")


def _ylim(ax, runs, paper):
    # The paper's range, except for quick runs whose errors sit far above it.
    ax.set_ylim(*((0, None) if any(rows.quick.any() for rows in runs.values()) else paper))


def _finish(fig, title):
    if title:  # wrapped to the figure's width (about 12 characters an inch at this size)
        width = int(fig.get_figwidth() * 12)
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize="medium")
    fig.tight_layout()
    return fig


def fig1(df):
    """Fig. 1: training (left) and test (right) error of plain-20 and plain-56 vs iterations."""
    runs = _select(df, FIG1_RUNS, prefer=("degradation", "depth"))
    _require(runs, FIG1_RUNS)
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    scale, xlabel = _iterations(runs)
    for ax, column, ylabel in zip(axes, ("train_err", "test_err"), ("training error (%)", "test error (%)")):
        for name, rows in runs.items():
            _curve(ax, rows, column, dict(linewidth=1.5), f"{models.parse_name(name)[1]}-layer", scale)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        _ylim(ax, runs, (0, 20))
        _legend(ax)
    return _finish(fig, _title(pd.concat(runs.values())))


def fig6(df):
    """Fig. 6: plain (left), residual (middle) and ResNet-110/1202 (right); dashed training error,
    bold test error. Panels hold the runs that exist; CannotDraw if none does."""
    names = list(dict.fromkeys(n for panel in FIG6_PANELS for n in panel))
    runs = _select(df, names, prefer=DEPTH_EXPERIMENTS)
    _require(runs, names, least="one")
    fig = Figure(figsize=(13, 3.4))
    axes = fig.subplots(1, 3)
    scale, xlabel = _iterations(runs)
    for ax, panel, ylim in zip(axes, FIG6_PANELS, ((0, 20), (0, 20), (5, 20))):
        for name in panel:
            if name in runs:
                rows = runs[name]
                _curve(ax, rows, "train_err", TRAIN_DASHED, scale=scale)
                _curve(ax, rows, "test_err", TEST_BOLD, _label(name, rows.state.iloc[0]), scale)
        absent = [_label(n) for n in panel if n not in runs]
        if absent:
            ax.text(0.03, 0.03, "not run: " + ", ".join(absent), transform=ax.transAxes, fontsize="x-small", color="gray")
        if len(absent) < len(panel):
            _legend(ax, TRAIN_DASHED)
        ax.set(xlabel=xlabel, ylabel="error (%)")
        _ylim(ax, runs, ylim)
    return _finish(fig, _title(pd.concat(runs.values())))


def fig4(df):
    """Fig. 4: 18 vs 34 layers, plain (left) and residual (right); thin training, bold test error."""
    names = [n for panel in FIG4_PANELS for n in panel]
    runs = _select(df, names, prefer=("imagenet18_34", "degradation18_34"))
    _require(runs, names, least="one")
    sample = pd.concat(runs.values())
    cifar = (sample.stem == "cifar").any()
    test = "test" if cifar else "val"
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    scale, xlabel = _iterations(runs)
    for ax, panel in zip(axes, FIG4_PANELS):
        for name in panel:
            if name in runs:
                rows = runs[name]
                _curve(ax, rows, "train_err", TRAIN_THIN, scale=scale)
                _curve(ax, rows, "test_err", TEST_BOLD, _label(name, rows.state.iloc[0]), scale)
        ax.set(xlabel=xlabel, ylabel="error (%)")
        ax.set_ylim(0, None)
        _legend(ax, TRAIN_THIN, test=test)
    variant = ["CIFAR variant (3x3 stem, CIFAR-10), not the paper's ImageNet runs"] if cifar else []
    return _finish(fig, _title(sample, *variant))


def fig_depth(df):
    """Final training (dashed) and test (bold) error against depth: plain (left), residual (right),
    for the CIFAR-family runs."""
    final = final_metrics(df)
    final = final[~final.model.map(models.is_imagenet_family).astype(bool)].sort_values("depth")
    if final.empty:
        raise CannotDraw("missing: any CIFAR-family run (plain20 ... resnet1202)")
    final = final.assign(rank=final.experiment.map(lambda e: _rank(e, DEPTH_EXPERIMENTS))).sort_values(["run", "rank"])
    twice = final.run[final.duplicated(["run", "rank"])].unique()
    if len(twice):
        raise CannotDraw(f"ambiguous: several runs named {', '.join(twice)}; draw one result set at a time")
    final = final.drop_duplicates("run").sort_values("depth")  # a run of several experiments: the preferred one
    depths = sorted(final.depth.unique())
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, residual, name in zip(axes, (False, True), ("plain", "ResNet")):
        rows = final[final.residual == residual]
        x = [depths.index(d) for d in rows.depth]  # evenly spaced depths, the same in both panels
        for column, style, label in (("final_train_err", TRAIN_DASHED, "train"), ("final_test_err", TEST_BOLD, "test")):
            (line,) = ax.plot(x, rows[column], marker="o", color="k", label=label, **style)
            line.set_gid(f"{'resnet' if residual else 'plain'}:{label}")
        ax.set(xlabel="depth (layers)", ylabel="final error (%)", title=name)
        ax.set_xticks(range(len(depths)), labels=depths)
        ax.set_xlim(-0.5, len(depths) - 0.5)
        ax.legend(fontsize="small", frameon=False)
    axes[0].set_ylim(0, 1.08 * final[["final_train_err", "final_test_err"]].max().max())  # shared: room for both panels
    return _finish(fig, _title(df[df.path.isin(final.path)]))


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


def response_stds(df, device=None, runs=FIG7_RUNS):
    """{run: Series of layer_response_std indexed by module name} over the test set, for those of
    `runs` with a final.pt (loaded with the run's config: model, num_classes, shortcut, stem, data).
    CannotDraw if none has one, or if the test data cannot be loaded."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    found = _select(df, runs, prefer=("degradation", "depth"))
    _require(found, runs, least="one")
    have = {n: Path(rows.path.iloc[0]) / "final.pt" for n, rows in found.items()}
    have = {n: p for n, p in have.items() if p.exists()}
    if not have:
        raise CannotDraw(f"missing final.pt: {', '.join(found)}")
    stds, images = {}, {}
    for name, path in have.items():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        config = ckpt["config"]
        model = models.build_model(config["model"], config["num_classes"], config.get("shortcut"), config.get("stem"))
        model.load_state_dict(ckpt["model"])
        source = (config["data"], config.get("data_dir", "data"))
        if source not in images:
            images[source] = _test_images(*source, device)
        stds[name] = pd.Series(layer_response_std(model.to(device), images[source]), index=models.response_points(model))
    return stds


def _test_images(source, data_dir, device):
    try:
        ds = data.load(source, data_dir, device=device)
    except data.DataError as e:
        raise CannotDraw(f"no test data: {e}") from None
    return data.normalize(ds.test.images, ds.mean)


def fig7(stds, title=""):
    """Fig. 7: std of layer responses per layer, in network order (top) and sorted descending (bottom).
    stds: {run name: list (or Series) of stds}, as from `response_stds`."""
    if not stds:
        raise CannotDraw(f"missing: {', '.join(FIG7_RUNS)}")
    fig = Figure(figsize=(6.5, 6))
    axes = fig.subplots(2, 1)
    for ax, order, xlabel in zip(axes, ("order", "sorted"), ("layer index (original)", "layer index (sorted by magnitude)")):
        for name, values in stds.items():
            kind, depth = models.parse_name(name)
            ys = sorted(values, reverse=True) if order == "sorted" else list(values)
            style = dict(linestyle="--" if kind == "plain" else "-", linewidth=1.2)
            (line,) = ax.plot(range(1, len(ys) + 1), ys, color=COLORS.get(depth), label=_label(name), **style)
            line.set_gid(f"{name}:{order}")
        ax.set(xlabel=xlabel, ylabel="std")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, None)
        ax.legend(fontsize="small", frameon=False, loc="best")
    return _finish(fig, title)


# --- predictions on test images ----------------------------------------------------------------

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
    score = f"predicted (true), mistakes in red: {correct}/{len(labels)} right ({100 * correct / len(labels):.1f}%) on these images"
    return _finish(fig, "\n".join(filter(None, [title, score])))


# --- tables ------------------------------------------------------------------------------------


def summary_table(df):
    """One row per run: params, final training and test error, best test error, minutes, state."""
    if df.empty:
        raise CannotDraw("missing: any run")
    final = final_metrics(df)
    columns = ["experiment", "run", "params", "final_train_err", "final_test_err", "best_test_err", "minutes", "iterations", "state"]
    table = final[columns].reset_index(drop=True)
    table.attrs["note"] = _title(df, "errors in %; final = last epoch; minutes = sum of epoch times")
    return table


def table6(df):
    """Table 6: our ResNets' final test error next to the paper's, one row per paper depth."""
    names = [f"resnet{d}" for d in PAPER_TABLE6]
    runs = _select(df, names, prefer=DEPTH_EXPERIMENTS)
    _require(runs, names, least="one")
    rows = []
    for depth, (paper_params, paper_err) in PAPER_TABLE6.items():
        run = runs.get(f"resnet{depth}", df.iloc[:0])  # no rows: NaN below
        ours = run.test_err.iloc[-1] if len(run) else float("nan")
        rows.append({
            "depth": depth, "params": run.params.iloc[-1] if len(run) else pd.NA, "test_err": ours,
            "best_test_err": run.test_err.min(), "paper_params": int(paper_params), "paper_test_err": paper_err,
            "diff": ours - paper_err,
        })
    table = pd.DataFrame(rows).astype({"params": "Int64"})
    sample = pd.concat(runs.values())
    table.attrs["note"] = _title(sample, f"CIFAR-10 test error (%); ours: final epoch of one run on {', '.join(sample.dataset.dropna().unique())}; "
                                 "diff = ours - paper; the paper's 110 is the best of 5 runs (mean 6.61±0.16)")
    return table


def table2(df):
    """Table 2: our 18/34-layer plain and residual nets' top-1 error next to the paper's ImageNet
    top-1 (10-crop): our 10-crop error where the runs have one (evaluation.json), else the last
    epoch's single-view test error. A difference column only when ours is a 10-crop test of an
    ImageNet-stem net; the CIFAR variant is not comparable."""
    names = [n for panel in FIG4_PANELS for n in panel]
    runs = _select(df, names, prefer=("imagenet18_34", "degradation18_34"))
    _require(runs, names, least="one")
    sample = pd.concat(runs.values())
    ten_crop = sample.top1_err_10crop.notna().all()
    err = {n: rows.top1_err_10crop.iloc[-1] if ten_crop else rows.test_err.iloc[-1] for n, rows in runs.items()}
    rows = [{"layers": d, "plain": err.get(f"plain{d}", float("nan")), "resnet": err.get(f"resnet{d}", float("nan")),
             "paper_plain": p, "paper_resnet": r} for d, (p, r) in PAPER_TABLE2.items()]
    datasets = ", ".join(sample.dataset.dropna().unique())
    if (sample.stem == "cifar").any():
        what = f"ours: CIFAR variant (3x3 stem), final test error (%) on {datasets}; the paper's: ImageNet val top-1, 10-crop. Not comparable"
    elif ten_crop:
        what = f"ours: top-1 error (%) on {datasets}, 10-crop, after the last iteration; the paper's: ImageNet val top-1, 10-crop"
        for row in rows if not sample.quick.any() else []:  # a quick run's data is not ImageNet
            row["diff_plain"], row["diff_resnet"] = row["plain"] - row["paper_plain"], row["resnet"] - row["paper_resnet"]
    else:
        what = f"ours: final test error (%) on {datasets}, single view (centre crop); the paper's: ImageNet val top-1, 10-crop"
    table = pd.DataFrame(rows)
    table.attrs["note"] = _title(sample, what)
    return table


def to_markdown(table):
    """A GitHub Markdown table; errors with 2 decimals, params in millions, NaN as a dash."""

    def cell(column, v):
        if pd.isna(v):
            return "—"
        if "params" in column:
            return f"{v / 1e6:.2f}M"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(cell, table.columns, row)) + " |" for row in table.itertuples(index=False)]
    note = table.attrs.get("note")
    return "\n".join(lines + ([f"\n{note}"] if note else [])) + "\n"


# --- everything at once ------------------------------------------------------------------------

FIGURES = ("fig1", "fig4", "fig6", "fig7", "depth")
TABLES = {"table6": table6, "table2": table2, "summary": summary_table}
FIGURE_RUNS = {"fig4": [n for p in FIG4_PANELS for n in p], "fig6": list(dict.fromkeys(n for p in FIG6_PANELS for n in p))}


def draw(paths, out_dir="figures", fig7=True, device=None):
    """Draw every figure and table the runs allow into out_dir (`<name>.png/.pdf`, `<table>.md/.csv`).

    paths: a path, a list of paths (see load_runs) or a frame from load_runs. Quick runs go to
    out_dir/quick, with keys "quick/<name>". Returns {name: [written paths]} for what was
    drawn and {name: "missing: ..."} (or "ambiguous: ...", "skipped") for the rest; prints both.
    fig7=False skips Fig. 7, which loads final.pt and the test set. device: for Fig. 7 (default cuda if any).
    """
    df = paths if isinstance(paths, pd.DataFrame) else load_runs(*([paths] if isinstance(paths, (str, Path)) else paths))
    result = {}
    for prefix, subset, folder in _result_sets(df, Path(out_dir)):
        result |= _draw_set(subset, folder, fig7, device, prefix)
    return result


def _result_sets(df, out_dir):
    """Full runs into out_dir; quick runs, not the paper's setting, always apart into out_dir/quick."""
    sets = [("", df[~df.quick], out_dir)] if df.empty or (~df.quick).any() else []
    return sets + ([("quick/", df[df.quick], out_dir / "quick")] if df.quick.any() else [])


def _draw_set(df, out_dir, with_fig7, device, prefix):
    out_dir.mkdir(parents=True, exist_ok=True)
    result, absent = {}, {}
    for name in FIGURES:
        try:
            if name == "fig7" and not with_fig7:
                result[name] = "skipped"
            else:
                result[name], absent[name] = _save_figure(name, df, out_dir, device)
        except CannotDraw as e:
            result[name] = str(e)
    for name, make in TABLES.items():
        try:
            table = make(df)
        except CannotDraw as e:
            result[name] = str(e)
            continue
        table.to_csv(out_dir / f"{name}.csv", index=False)
        (out_dir / f"{name}.md").write_text(to_markdown(table))
        result[name] = [out_dir / f"{name}.md", out_dir / f"{name}.csv"]
    for name, value in result.items():
        if isinstance(value, list):
            without = f" (without {', '.join(absent[name])})" if absent.get(name) else ""
            print(f"{prefix}{name}: {', '.join(map(str, value))}{without}")
        else:
            print(f"{prefix}{name}: {'' if value == 'skipped' else 'not drawn, '}{value}")
    return {prefix + name: value for name, value in result.items()}


def _save_figure(name, df, out_dir, device):
    """Draw and save one figure; returns (written paths, the figure's runs it was drawn without)."""
    written = []
    if name == "fig7":
        stds = response_stds(df, device)
        fig = fig7(stds, _title(df[df.run.isin(list(stds))]))
        rows = [(run, i + 1, module, s) for run, values in stds.items() for i, (module, s) in enumerate(values.items())]
        pd.DataFrame(rows, columns=["run", "layer", "module", "std"]).to_csv(out_dir / "fig7.csv", index=False)
        written.append(out_dir / "fig7.csv")
        absent = [n for n in FIG7_RUNS if n not in stds]
    else:
        fig = {"fig1": fig1, "fig4": fig4, "fig6": fig6, "depth": fig_depth}[name](df)
        absent = [n for n in FIGURE_RUNS.get(name, []) if n not in set(df.run)]
    for suffix in (".png", ".pdf"):
        fig.savefig(out_dir / f"{name}{suffix}", dpi=150, metadata={"CreationDate": None} if suffix == ".pdf" else None)  # same runs, same bytes
        written.append(out_dir / f"{name}{suffix}")
    return written, absent


# --- command line ------------------------------------------------------------------------------

EXAMPLES = """examples:
  uv run python -m resnet_repro.analysis                          # everything under results/ -> figures/
  uv run python -m resnet_repro.analysis results/degradation --out figures/
  uv run python -m resnet_repro.analysis results/degradation-quick --no-fig7     # quick runs: figures/quick/
  uv run python -m resnet_repro.analysis predictions results/degradation/resnet56   # its predictions on 32 test images
  uv run python -m resnet_repro.analysis compare results/cpu-demo/degradation-quick results/cpu-8k/degradation

Figures (PNG and PDF): fig1 (plain-20 vs plain-56), fig6 (plain, ResNet, ResNet-110/1202),
fig4 (18 vs 34 layers), fig7 (std of layer responses, needs final.pt and the test data), depth
(final error against depth). Tables (Markdown and CSV): table6, table2, summary.
A figure whose runs are missing is listed with their names. Quick runs (config "quick") are
always drawn apart, into <out>/quick.
`predictions RUN_DIR` draws one finished run's predictions instead (see `predictions --help`);
`compare A B ...` draws the error curves of several result folders together (see `compare --help`).
"""

PREDICTIONS_EXAMPLES = """examples:
  uv run python -m resnet_repro.analysis predictions results/degradation/resnet56
  uv run python -m resnet_repro.analysis predictions results/degradation-quick/resnet20 --n 16 --out pred.png

Loads RUN_DIR/final.pt (written when the run is done) and the run's test data, predicts a fixed random
sample of test images (the same ones for every run with the same --seed and test set) and draws them
titled "predicted (true)", mistakes in red.
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["predictions"]:
        return predictions_main(argv[1:])
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m resnet_repro.analysis",
        description="Draw the paper's figures and tables from training results (results/<experiment>/<run>/metrics.csv).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="*", default=["results"], metavar="RESULTS",
                        help="results root, experiment or run directories, searched recursively (default: results)")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output directory (default: figures)")
    parser.add_argument("--no-fig7", action="store_true", help="skip Fig. 7 (it loads final.pt and the test set)")
    parser.add_argument("--device", help="device for Fig. 7's forward passes (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.exit(2, f"error: --out {args.out} is a file; it must be a directory (or not exist yet)\n")
    try:
        df = load_runs(*args.results)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    if df.empty:
        parser.exit(1, f"no runs (metrics.csv with at least one epoch) under {', '.join(args.results)}\n")
    draw(df, args.out, fig7=not args.no_fig7, device=args.device)
    for prefix, subset, _ in _result_sets(df, args.out):
        print(f"\n{prefix}summary:\n{to_markdown(summary_table(subset))}", end="")
    return 0


def fig_compare(sets):
    """Training (left) and test (right) error against epochs of several result sets ({label: frame from
    load_runs}): colour by net, line style by set (seaborn). CannotDraw if a set has two runs of one name."""
    import seaborn as sns

    frames = []
    for label, df in sets.items():
        twice = df.groupby("run").path.nunique().loc[lambda n: n > 1]
        if len(twice):
            raise CannotDraw(f"ambiguous: {label} has several runs named {', '.join(twice.index)}; give one experiment per set")
        frames.append(df.assign(results=label, net=df.run.map(_label)))
    tidy = pd.concat(frames, ignore_index=True)
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, title in zip(axes, ("train_err", "test_err"), ("training error", "test error")):
        sns.lineplot(data=tidy, x="epoch", y=column, hue="net", style="results", estimator=None, ax=ax,
                     hue_order=sorted(tidy.net.unique(), key=lambda n: (n.startswith("ResNet"), int(n.split("-")[1]))))
        ax.set(xlabel="epochs", ylabel="error (%)", title=title)
        ax.set_ylim(0, None)
        ax.legend(fontsize="x-small", frameon=False)
    return _finish(fig, "")


def compare_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnet_repro.analysis compare",
        description="Error curves of several result folders in one figure (colour: net, line style: folder), "
        "and for two folders the table of compare(a, b): final errors side by side with their difference.",
    )
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS", help="result folders (experiment or results roots)")
    parser.add_argument("--out", type=Path, default=Path("figures/compare.png"), help="PNG to write (default: figures/compare.png)")
    args = parser.parse_args(argv)
    if args.out.is_dir():
        parser.exit(2, f"error: --out {args.out} is a directory; name a .png file\n")
    try:
        sets = {str(p): load_runs(p) for p in args.results}
        fig = fig_compare(sets)
    except (FileNotFoundError, ValueError, CannotDraw) as e:
        parser.exit(2, f"error: {e}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=150)
    print(f"compare: {args.out}")
    if len(sets) == 2:
        a, b = sets.values()
        table = compare(a, b)[["run", "final_train_err_a", "final_train_err_b", "final_test_err_a", "final_test_err_b", "iterations_a", "iterations_b"]]
        print(f"a = {args.results[0]}, b = {args.results[1]}\n{table.to_string(index=False, float_format=lambda v: f'{v:.2f}')}")
    return 0


def predictions_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnet_repro.analysis predictions",
        description="Draw a finished run's predictions on a fixed sample of test images.",
        epilog=PREDICTIONS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory, e.g. results/degradation/resnet56")
    parser.add_argument("--out", type=Path, help="PNG to write (default: figures/predictions-<experiment>-<run>.png)")
    parser.add_argument("--n", type=int, default=32, help="images to show (default: 32, as 4 rows of 8)")
    parser.add_argument("--seed", type=int, default=0, help="which test images (default: 0)")
    parser.add_argument("--device", default="cpu", help="device for the forward pass (default: cpu)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.exit(2, f"error: --n must be at least 1, not {args.n}\n")
    path = args.run_dir / "final.pt"
    if not args.run_dir.is_dir():
        parser.exit(2, f"error: {args.run_dir}: no such run directory\n")
    if not path.exists():
        try:
            state = _run_state(args.run_dir, absent="not started")
        except ValueError as e:
            parser.exit(2, f"error: {e}\n")
        parser.exit(2, f"error: {args.run_dir} has no final.pt: the run is not finished (state: {state})\n")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        parser.exit(2, f"error: cannot read {path}: {e}\n")
    config = ckpt["config"]
    streamed = config.get("loader") == "stream"
    try:
        if streamed:  # a JPEG folder: the sampled images' centre crops, as each epoch's test
            from resnet_repro import stream

            ds = stream.load(config["data"], config.get("data_dir", "data"), crop=config["image_size"],
                             test_resize=config["test_resize"], scale=tuple(config["scale"]))
        else:
            ds = data.load(config["data"], config.get("data_dir", "data"), image_size=config.get("image_size", 32), resize=config.get("resize", False))
    except data.DataError as e:
        parser.exit(2, f"error: {e}\n")
    model = models.build_model(config["model"], config["num_classes"], config.get("shortcut"), config.get("stem"))
    model.load_state_dict(ckpt["model"])

    index = sample_indices(len(ds.test), args.n, args.seed)
    if streamed:
        images, labels = next(stream.eval_batches(ds.test, index.tolist(), len(index), "cpu"))
    else:
        images, labels = ds.test.images[index], ds.test.labels[index]
    predictions = predict(model, images, ds.mean, args.device)
    experiment, run = config.get("experiment", args.run_dir.parent.name), config.get("run", args.run_dir.name)
    title = f"{experiment}/{run}: {_label(config['model'])} on {config.get('dataset', ds.name)}, {len(index)} of {len(ds.test)} test images (seed {args.seed})"
    fig = fig_predictions(images, labels, predictions, ds.classes, title)
    out = args.out or Path("figures") / f"predictions-{experiment}-{run}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    correct = (predictions == labels).sum().item()
    print(f"{out}: {correct}/{len(index)} right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
