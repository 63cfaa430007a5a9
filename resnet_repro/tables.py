"""Tables: our runs next to the paper's numbers (Table 6, Table 2) and a summary of runs, as DataFrames whose
`attrs["note"]` says what ours are, and as GitHub Markdown."""

import pandas as pd

from resnet_repro.results import DEPTH_EXPERIMENTS, CannotDraw, final_metrics, require, select, title_of

# The paper's numbers: Table 6 (CIFAR-10 test error, ResNets) and Table 2 (ImageNet top-1, 10-crop).
PAPER_TABLE6 = {
    20: (0.27e6, 8.75),
    32: (0.46e6, 7.51),
    44: (0.66e6, 7.17),
    56: (0.85e6, 6.97),
    110: (1.7e6, 6.43),
    1202: (19.4e6, 7.93),
}
PAPER_TABLE2 = {18: (27.94, 27.88), 34: (28.54, 25.03)}  # layers: (plain, ResNet)
TABLE2_RUNS = ("plain18", "plain34", "resnet18", "resnet34")
SUMMARY_NOTE = "errors in %; final = last row; minutes = sum of row times; images/s: training, median of rows"
SUMMARY_COLUMNS = ["experiment", "run", "params", "final_train_err", "final_test_err", "best_test_err", "minutes", "images_per_second", "iterations", "state"]  # fmt: skip


def summary_table(runs):
    """One row per run of a frame from load_runs, indexed by its run directory: params, final training and test
    error, best test error, minutes, images/s, iterations, state."""
    if runs.empty:
        raise CannotDraw("missing: any run")
    final = final_metrics(runs)
    table = final[SUMMARY_COLUMNS].set_axis(final.path)  # indexed by run directory
    table.attrs["note"] = title_of(runs, SUMMARY_NOTE)
    return table


def unfinished(runs):
    """The note naming the runs of {name: rows} that are not done, with how far they got: [] when all are."""
    late = []
    for name, rows in runs.items():
        last = rows.iloc[-1]
        if last.state != "done":
            planned = f" of {last.planned_iterations:,}" if pd.notna(last.planned_iterations) else ""
            late.append(f"{name} ({last.state}, iteration {last.iteration:,}{planned})")
    return [f"not done: {', '.join(late)}"] if late else []


def table6(df):
    """Table 6: our ResNets' final test error next to the paper's, one row per paper depth."""
    names = [f"resnet{d}" for d in PAPER_TABLE6]
    runs = select(df, names, prefer=DEPTH_EXPERIMENTS)
    require(runs, names, least="one")
    rows = []
    for depth, (paper_params, paper_err) in PAPER_TABLE6.items():
        run = runs.get(f"resnet{depth}", df.iloc[:0])  # no rows: NaN below
        ours = run.test_err.iloc[-1] if len(run) else float("nan")
        rows.append(
            {
                "depth": depth,
                "params": run.params.iloc[-1] if len(run) else pd.NA,
                "test_err": ours,
                "best_test_err": run.test_err.min(),
                "paper_params": int(paper_params),
                "paper_test_err": paper_err,
                "diff": ours - paper_err,
            }
        )
    table = pd.DataFrame(rows).astype({"params": "Int64"})
    sample = pd.concat(runs.values())
    table.attrs["note"] = title_of(
        sample,
        f"CIFAR-10 test error (%); ours: final epoch of one run on {', '.join(sample.dataset.dropna().unique())}; "
        "diff = ours - paper; the paper's 110 is the best of 5 runs (mean 6.61±0.16)",
        *unfinished(runs),
    )
    return table


def table2(df):
    """Table 2: our 18/34-layer plain and residual nets' top-1 error next to the paper's ImageNet
    top-1 (10-crop): our 10-crop error where the runs have one (evaluation.json), else the last
    epoch's single-view test error. A difference column only when ours is a 10-crop test of an
    ImageNet-stem net; the CIFAR variant is not comparable."""
    names = list(TABLE2_RUNS)
    runs = select(df, names, prefer=("imagenet18_34", "degradation18_34"))
    require(runs, names, least="one")
    sample = pd.concat(runs.values())
    ten_crop = sample.top1_err_10crop.notna().all()
    err = {n: rows.top1_err_10crop.iloc[-1] if ten_crop else rows.test_err.iloc[-1] for n, rows in runs.items()}
    rows = [
        {
            "layers": d,
            "plain": err.get(f"plain{d}", float("nan")),
            "resnet": err.get(f"resnet{d}", float("nan")),
            "paper_plain": p,
            "paper_resnet": r,
        }
        for d, (p, r) in PAPER_TABLE2.items()
    ]
    datasets = ", ".join(sample.dataset.dropna().unique())
    if (sample.stem == "cifar").any():
        what = f"ours: CIFAR variant (3x3 stem), final test error (%) on {datasets}; the paper's: ImageNet val top-1, 10-crop. Not comparable"
    elif ten_crop:
        what = f"ours: top-1 error (%) on {datasets}, 10-crop, after the last iteration; the paper's: ImageNet val top-1, 10-crop"
        for row in rows if not sample.quick.any() else []:  # a quick run's data is not ImageNet
            row["diff_plain"], row["diff_resnet"] = (
                row["plain"] - row["paper_plain"],
                row["resnet"] - row["paper_resnet"],
            )
    else:
        what = f"ours: final test error (%) on {datasets}, single view (centre crop); the paper's: ImageNet val top-1, 10-crop"
    table = pd.DataFrame(rows)
    table.attrs["note"] = title_of(sample, what, *unfinished(runs))
    return table


def to_markdown(table):
    """A GitHub Markdown table; errors with 2 decimals, params in millions, images/s whole, NaN as a dash."""

    def cell(column, v):
        if pd.isna(v):
            return "—"
        if "params" in column:
            return f"{v / 1e6:.2f}M"
        if column == "images_per_second":
            return f"{v:.0f}" if v >= 10 else f"{v:.1f}"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(cell, table.columns, row)) + " |" for row in table.itertuples(index=False)]
    note = table.attrs.get("note")
    return "\n".join(lines + ([f"\n{note}"] if note else [])) + "\n"
