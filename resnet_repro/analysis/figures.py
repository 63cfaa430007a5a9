"""The paper's figures, drawn from a frame of resnet_repro.analysis.results.load_runs: one matplotlib Figure each.

- `fig1` (plain-20 vs plain-56), `fig6` (plain, ResNet, ResNet-110/1202), `fig4` (18 vs 34 layers),
  `fig_depth` (final error against depth), `fig_compare` (several result folders, via seaborn).
A run with several seeds is drawn as the mean of its seeds with a band of ± their std (error bars in
`fig_depth`); a run of one seed as its own curve.
Figures of a finished model (Fig. 7, predictions) are in resnet_repro.analysis.inspection.
"""

import math
import textwrap

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from resnet_repro import models
from resnet_repro.analysis.results import (
    DEPTH_EXPERIMENTS,
    CannotDraw,
    final_metrics,
    finished,
    require,
    run_state,
    select,
    several_seeds,
    title_of,
    unfinished,
)

FIG1_RUNS = ("plain20", "plain56")
FIG4_PANELS = (("plain18", "plain34"), ("resnet18", "resnet34"))
FIG6_PANELS = (
    ("plain20", "plain32", "plain44", "plain56"),
    ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
    ("resnet110", "resnet1202"),
)
COLORS = {18: "tab:blue", 20: "#e8a30c", 32: "c", 34: "tab:red", 44: "g", 56: "r", 110: "k", 1202: "m"}
TRAIN_DASHED = dict(linestyle="--", linewidth=1.0)  # Fig. 6: dashed training error
TRAIN_THIN = dict(linestyle="-", linewidth=0.8)  # Fig. 4: thin training error
TEST_BOLD = dict(linestyle="-", linewidth=2.2)


def net_label(name, state=None):
    kind, depth = models.parse_name(name)
    return stated(f"{'ResNet' if kind == 'resnet' else 'plain'}-{depth}", state)


def stated(label, state):
    """A legend label, with the run's state where it is not done: "plain-56 (interrupted)"."""
    return label if state in (None, "done") else f"{label} ({state})"


def _span(rows):
    """How far the x-axis reaches for a run: its last iteration, or its planned schedule while it is not done,
    so that a curve shows how much of its run it is."""
    planned = rows.planned_iterations.max()
    if run_state(rows) == "done" or pd.isna(planned):
        return rows.iteration.max()
    return max(planned, rows.iteration.max())


def iteration_axis(runs):
    """The x-axis of curves: the paper's "iter. (1e4)", or plain iterations for runs shorter than 10k."""
    longest = max(_span(rows) for rows in runs.values())
    return (1e4, "iter. (1e4)") if longest >= 1e4 else (1, "iterations")


def _xlim(ax, runs, scale):
    """Where a run is not done, the axis spans the whole planned schedule (see _span)."""
    if any(run_state(rows) != "done" for rows in runs.values()):
        span = max(_span(rows) for rows in runs.values()) / scale
        ax.set_xlim(-0.02 * span, 1.02 * span)  # the same in every panel, whatever its curves


def _curve(ax, rows, column, style, label=None, scale=1e4):
    """One run's curve; for a run of several seeds (run directories) their mean, in a band of ± their std."""
    kind, depth = models.parse_name(rows.run.iloc[0])
    gid = f"{rows.run.iloc[0]}:{column.split('_')[0]}"  # "plain20:train", read back by the tests
    if rows.path.nunique() > 1:
        seeds = rows.groupby("iteration")[column].agg(["mean", "std"])
        x, y = seeds.index / scale, seeds["mean"]
        band = ax.fill_between(x, y - seeds["std"], y + seeds["std"], color=COLORS.get(depth), alpha=0.2, linewidth=0)
        band.set_gid(f"{gid}:band")
    else:
        x, y = rows.iteration / scale, rows[column]
    marker = "o" if len(x) == 1 else None  # a line of one point draws nothing
    (line,) = ax.plot(x, y, color=COLORS.get(depth), label=label, marker=marker, **style)
    line.set_gid(gid)


def _legend(ax, train_style=None, train="train", test="test"):
    handles, labels = ax.get_legend_handles_labels()
    if train_style:  # a key to the line styles after the nets
        handles += [Line2D([], [], color="gray", **train_style), Line2D([], [], color="gray", **TEST_BOLD)]
        labels += [train, test]
    ax.legend(handles, labels, fontsize="small", frameon=False, loc="best")


def _ylim(ax, runs, paper):
    """The paper's range, or 0 to a round 1.5x the highest final error where the runs end above it (short
    schedules, quick runs): like the paper's, early epochs may leave the top, the ends never do."""
    ends = [
        rows.groupby("path", sort=False).tail(1)[["train_err", "test_err"]].to_numpy().ravel() for rows in runs.values()
    ]
    last = max((v for end in ends for v in end if pd.notna(v)), default=0)
    ax.set_ylim(*(paper if last < 0.9 * paper[1] else (0, min(100, 10 * math.ceil(1.5 * last / 10)))))


def finish(fig, title):
    if title:  # wrapped to the figure's width (about 12 characters an inch at this size)
        width = int(fig.get_figwidth() * 12)
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize="medium")
    fig.tight_layout()
    return fig


def fig1(df):
    """Fig. 1: training (left) and test (right) error of plain-20 and plain-56 vs iterations."""
    runs = select(df, FIG1_RUNS, prefer=("degradation", "depth"))
    require(runs, FIG1_RUNS)
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    scale, xlabel = iteration_axis(runs)
    for ax, column, ylabel in zip(axes, ("train_err", "test_err"), ("training error (%)", "test error (%)")):
        for name, rows in runs.items():
            label = stated(f"{models.parse_name(name)[1]}-layer", run_state(rows))
            _curve(ax, rows, column, dict(linewidth=1.5), label, scale)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        _xlim(ax, runs, scale)
        _ylim(ax, runs, (0, 20))
        _legend(ax)
    return finish(fig, title_of(pd.concat(runs.values())))


def fig6(df):
    """Fig. 6: plain (left), residual (middle) and ResNet-110/1202 (right); dashed training error,
    bold test error. Panels hold the runs that exist, a panel without any is left out; CannotDraw if none
    does."""
    names = list(dict.fromkeys(n for panel in FIG6_PANELS for n in panel))
    runs = select(df, names, prefer=DEPTH_EXPERIMENTS)
    require(runs, names, least="one")
    panels = [(p, ylim) for p, ylim in zip(FIG6_PANELS, ((0, 20), (0, 20), (5, 20))) if any(n in runs for n in p)]
    fig = Figure(figsize=(13 * len(panels) / 3 + 0.5, 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    scale, xlabel = iteration_axis(runs)
    for ax, (panel, ylim) in zip(axes, panels):
        for name in panel:
            if name in runs:
                rows = runs[name]
                _curve(ax, rows, "train_err", TRAIN_DASHED, scale=scale)
                _curve(ax, rows, "test_err", TEST_BOLD, net_label(name, run_state(rows)), scale)
        absent = [net_label(n) for n in panel if n not in runs]
        if absent:  # above the panel, where no curve or legend can be
            ax.set_title("not run: " + ", ".join(absent), loc="left", fontsize="x-small", color="gray")
        if len(absent) < len(panel):
            _legend(ax, TRAIN_DASHED)
        ax.set(xlabel=xlabel, ylabel="error (%)")
        _xlim(ax, runs, scale)
        _ylim(ax, runs, ylim)
    return finish(fig, title_of(pd.concat(runs.values())))


def fig4(df):
    """Fig. 4: 18 vs 34 layers, plain (left) and residual (right); thin training, bold test error."""
    names = [n for panel in FIG4_PANELS for n in panel]
    runs = select(df, names, prefer=("imagenet18_34", "degradation18_34"))
    require(runs, names, least="one")
    sample = pd.concat(runs.values())
    cifar = (sample.stem == "cifar").any()
    test = "test" if cifar else "val"
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    scale, xlabel = iteration_axis(runs)
    for ax, panel in zip(axes, FIG4_PANELS):
        for name in panel:
            if name in runs:
                rows = runs[name]
                _curve(ax, rows, "train_err", TRAIN_THIN, scale=scale)
                _curve(ax, rows, "test_err", TEST_BOLD, net_label(name, run_state(rows)), scale)
        ax.set(xlabel=xlabel, ylabel="error (%)")
        _xlim(ax, runs, scale)
        ax.set_ylim(0, None)
        _legend(ax, TRAIN_THIN, test=test)
    variant = ["CIFAR variant (3x3 stem, CIFAR-10), not the paper's ImageNet runs"] if cifar else []
    return finish(fig, title_of(sample, *variant))


def depth_finals(df):
    """The finished CIFAR-family runs' final errors for fig_depth, one row per run name (taken from the first of
    DEPTH_EXPERIMENTS that ran it): depth, residual, the mean over its seeds of final_train_err and final_test_err,
    their std (`<column>_std`, NaN for one seed) and `n`; the run directories it drew on; and {name: rows} of every
    run it chose, those not done included (left out: a last row is not a final error)."""
    final = final_metrics(df)
    final = final[~final.model.map(models.is_imagenet_family).astype(bool)]
    if final.empty:
        raise CannotDraw("missing: any CIFAR-family run (plain20 ... resnet1202)")
    runs = select(df[df.path.isin(final.path)], final.run.unique(), prefer=DEPTH_EXPERIMENTS)
    done = finished(runs)
    if not done:
        raise CannotDraw(f"not done: {', '.join(runs)}")
    final = final[final.path.isin(pd.concat(done.values()).path)]
    errors = {
        f"{c}{s}": (c, "mean" if not s else "std") for c in ("final_train_err", "final_test_err") for s in ("", "_std")
    }
    table = final.groupby("run").agg(
        depth=("depth", "first"), residual=("residual", "first"), n=("path", "size"), **errors
    )
    return table.reset_index().sort_values("depth"), final.path, runs


def fig_depth(df):
    """Final training (dashed) and test (bold) error against depth: plain (left), residual (right),
    for the finished CIFAR-family runs (those not done are named above); a run of several seeds at their mean,
    with error bars of ± their std."""
    final, paths, runs = depth_finals(df)
    depths = sorted(final.depth.unique())
    if len(depths) < 2:
        raise CannotDraw(f"missing: a second depth (only {depths[0]} has run to its end)")
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, residual, name in zip(axes, (False, True), ("plain", "ResNet")):
        rows = final[final.residual == residual]
        x = [depths.index(d) for d in rows.depth]  # evenly spaced depths, the same in both panels
        for column, style, label in (("final_train_err", TRAIN_DASHED, "train"), ("final_test_err", TEST_BOLD, "test")):
            (line,) = ax.plot(x, rows[column], marker="o", color="k", label=label, **style)
            line.set_gid(f"{'resnet' if residual else 'plain'}:{label}")
            if (rows.n > 1).any():
                bars = ax.errorbar(
                    x, rows[column], yerr=rows[f"{column}_std"], fmt="none", ecolor="k", elinewidth=0.8, capsize=3
                )
                bars.lines[2][0].set_gid(f"{line.get_gid()}:sd")
        if rows.empty:
            ran = any((models.parse_name(n)[0] == "resnet") == residual for n in runs)  # but is not done
            done = " done yet" if ran else ""
            ax.text(0.5, 0.5, f"no {name} run{done}", transform=ax.transAxes, ha="center", color="0.5")
        ax.set(xlabel="depth (layers)", ylabel="final error (%)", title=name)
        ax.set_xticks(range(len(depths)), labels=depths)
        ax.set_xlim(-0.5, len(depths) - 0.5)
        ax.legend(fontsize="small", frameon=False)
    top = max((final[c] + final[f"{c}_std"].fillna(0)).max() for c in ("final_train_err", "final_test_err"))
    axes[0].set_ylim(0, 1.08 * top)  # shared: room for both panels
    return finish(fig, title_of(df[df.path.isin(paths)], *unfinished(runs)))


def fig_compare(sets):
    """Training (left) and test (right) error against epochs of several result sets ({label: frame from
    load_runs}): colour by net, line style by set (seaborn); a run of several seeds as their mean with a band of
    ± their std (seaborn's errorbar="sd"). CannotDraw if a set has two runs of one name and seed."""
    import seaborn as sns

    frames = []
    for label, df in sets.items():
        runs = df.drop_duplicates("path")
        twice = runs.run[runs.duplicated(["run", "seed"])].unique()
        if len(twice):
            raise CannotDraw(
                f"ambiguous: {label} has several runs named {', '.join(twice)} of one seed; give one experiment per set"
            )
        frames.append(df.assign(results=label, net=df.run.map(net_label)))
    tidy = pd.concat(frames, ignore_index=True)
    seeds = (
        dict(estimator="mean", errorbar="sd")
        if any(several_seeds(df) for df in sets.values())
        else dict(estimator=None)
    )
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, title in zip(axes, ("train_err", "test_err"), ("training error", "test error")):
        sns.lineplot(
            data=tidy,
            x="epoch",
            y=column,
            hue="net",
            style="results",
            **seeds,
            ax=ax,
            hue_order=sorted(tidy.net.unique(), key=lambda n: (n.startswith("ResNet"), int(n.split("-")[1]))),
        )
        ax.set(xlabel="epochs", ylabel="error (%)", title=title)
        ax.set_ylim(0, None)
    axes[0].get_legend().remove()  # one legend, beside the right panel, off the curves
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize="small", frameon=False)
    return finish(fig, "")
