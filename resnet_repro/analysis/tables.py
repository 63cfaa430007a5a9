"""Tables: our runs next to the paper's numbers (Table 6, Table 2) and a summary of runs, as DataFrames whose
`attrs["note"]` says what ours are, and as GitHub Markdown. Where a run has several seeds, a number of ours is
their mean, with a `<column>_std` column and `n` beside it: Markdown shows "mean ± std (n)"."""

import pandas as pd

from resnet_repro.analysis.results import (
    DEPTH_EXPERIMENTS,
    CannotDraw,
    final_metrics,
    finished,
    last_rows,
    require,
    seed_summary,
    select,
    several_seeds,
    title_of,
    unfinished,
)

# The paper's numbers: Table 6 (CIFAR-10 test error, ResNets) and Table 2 (ImageNet top-1, 10-crop).
PAPER_TABLE6 = {
    20: (0.27e6, 8.75),
    32: (0.46e6, 7.51),
    44: (0.66e6, 7.17),
    56: (0.85e6, 6.97),
    110: (1.7e6, 6.43),
    1202: (19.4e6, 7.93),
}
PAPER_TABLE6_MEAN = {110: (6.61, 0.16, 5)}  # the paper's 110: best of 5 runs, their mean±std
PAPER_TABLE2 = {18: (27.94, 27.88), 34: (28.54, 25.03)}  # layers: (plain, ResNet)
TABLE2_RUNS = ("plain18", "plain34", "resnet18", "resnet34")
# The paper gives no number for its CIFAR-10 plain nets: these are read off Fig. 6 (left), as the public
# reproduction REPRODUCTION reads them. It trained all four nets with the paper's recipe for 64k iterations on
# the original CIFAR-10, 5 seeds each: the mean and std of their final test errors, from its README.
PAPER_FIG6_PLAIN = {"plain20": 9.0, "plain56": 13.0}
REPRODUCTION = "nabla0001/resnet"
REPRODUCTION_TEST_ERR = {
    "plain20": (9.78, 0.13, 5),
    "plain56": (12.95, 0.22, 5),
    "resnet20": (8.51, 0.22, 5),
    "resnet56": (7.40, 0.27, 5),
}
SUMMARY_NOTE = "errors in %; final = last row; minutes = sum of row times; images/s: training, median of rows"
SUMMARY_COLUMNS = [
    "experiment",
    "run",
    "params",
    "final_train_err",
    "final_test_err",
    "best_test_err",
    "minutes",
    "images_per_second",
    "iterations",
    "state",
]
SEEDS_NOTE = (
    "errors in %, mean ± std (n seeds) where a run has several; final = last row; minutes, images/s: mean of the seeds'"
)
SPREAD = ("final_train_err", "final_test_err", "best_test_err")  # the summary's columns given as mean ± std


def summary_table(runs):
    """The summary of a frame from load_runs: runs_table, or where a run has several seeds seeds_table."""
    return seeds_table(runs) if several_seeds(runs) else runs_table(runs)


def runs_table(runs):
    """One row per run directory (a run and seed) of a frame from load_runs, indexed by it: params, final training
    and test error, best test error, minutes, images/s, iterations, state."""
    if runs.empty:
        raise CannotDraw("missing: any run")
    final = final_metrics(runs)
    table = final[SUMMARY_COLUMNS].set_axis(final.path)  # indexed by run directory
    table.attrs["note"] = title_of(runs, SUMMARY_NOTE)
    return table


def seeds_table(runs):
    """One row per run and its seeds (results.seed_summary): the seeds, params, the mean and std of the final
    training and test error and of the best test error, n, and the mean minutes and images/s."""
    if runs.empty:
        raise CannotDraw("missing: any run")
    s = seed_summary(runs)
    table = s[["experiment", "run", "seeds", "params"]].copy()
    for column in SPREAD:
        table[column], table[f"{column}_std"] = s[f"{column}_mean"], s[f"{column}_std"]
    table = table.join(s[["n", "minutes", "images_per_second", "iterations", "state"]])
    table.attrs["note"] = title_of(runs, SEEDS_NOTE)
    return table


def ends(rows, column="test_err"):
    """The last row's `column` of each run directory (seed) in `rows`."""
    return last_rows(rows)[column]


def table6(df):
    """Table 6: our ResNets' final test error next to the paper's, one row per paper depth (table6_seeds where
    a run has several seeds)."""
    names = [f"resnet{d}" for d in PAPER_TABLE6]
    runs = select(df, names, prefer=DEPTH_EXPERIMENTS)
    require(runs, names, least="one")
    if any(rows.path.nunique() > 1 for rows in runs.values()):
        return table6_seeds(runs)
    rows, done = [], finished(runs)
    for depth, (paper_params, paper_err) in PAPER_TABLE6.items():
        run = done.get(f"resnet{depth}", df.iloc[:0])  # no rows: NaN below
        ours = run.test_err.iloc[-1] if len(run) else float("nan")
        rows.append(
            {
                "depth": depth,
                "params": runs[f"resnet{depth}"].params.iloc[-1] if f"resnet{depth}" in runs else pd.NA,
                "test_err": ours,
                "best_test_err": run.test_err.min(),
                "paper_params": int(paper_params),
                "paper_test_err": paper_err,
                "diff": ours - paper_err,
            }
        )
    table = pd.DataFrame(rows).astype({"params": "Int64"})
    sample = pd.concat(runs.values())
    mean, std, n = PAPER_TABLE6_MEAN[110]
    table.attrs["note"] = title_of(
        sample,
        f"CIFAR-10 test error (%); ours: final epoch of one run on {', '.join(sample.dataset.dropna().unique())}; "
        f"diff = ours - paper; the paper's 110 is the best of {n} runs (mean {mean:.2f}±{std:.2f})",
        *unfinished(runs),
    )
    return table


def table6_seeds(runs):
    """Table 6 of runs ({name: rows}) some of which have several seeds: the mean ± std (n) of our final test
    errors and the best of them, beside the paper's number and, for ResNet-110, the paper's mean±std of 5 runs."""
    rows, done = [], finished(runs)
    for depth, (paper_params, paper_err) in PAPER_TABLE6.items():
        run = done.get(f"resnet{depth}")
        err = ends(run) if run is not None else pd.Series(dtype=float)
        paper_mean, paper_std, paper_n = PAPER_TABLE6_MEAN.get(depth, (paper_err, float("nan"), 1))
        rows.append(
            {
                "depth": depth,
                "params": runs[f"resnet{depth}"].params.iloc[-1] if f"resnet{depth}" in runs else pd.NA,
                "test_err": err.mean(),
                "test_err_std": err.std(),
                "n": len(err),
                "best_of_seeds": err.min(),
                "paper_params": int(paper_params),
                "paper_test_err": paper_err,
                "paper_mean_std": f"{paper_mean:.2f} ± {paper_std:.2f} ({paper_n})" if paper_n > 1 else None,
                "diff": err.mean() - paper_mean,
            }
        )
    table = pd.DataFrame(rows).astype({"params": "Int64"})
    sample = pd.concat(runs.values())
    table.attrs["note"] = title_of(
        sample,
        f"CIFAR-10 test error (%); ours: final epoch, mean ± std (n seeds) and the best of the seeds, on "
        f"{', '.join(sample.dataset.dropna().unique())}; the paper's 110: best of {PAPER_TABLE6_MEAN[110][2]} runs "
        "and their mean ± std; diff = our mean - the paper's (its mean where it gives one)",
        *unfinished(runs),
    )
    return table


def plain_vs_residual(df):
    """The four nets of Fig. 1 and Fig. 6 (plain-20/56, ResNet-20/56): our final training and test error (mean ±
    std over seeds where a run has several) beside the paper's test error (Table 6; the plain nets' read off Fig. 6)
    and beside a public reproduction's mean ± std of 5 seeds on the original CIFAR-10 (REPRODUCTION)."""
    names = list(REPRODUCTION_TEST_ERR)
    runs = select(df, names, prefer=("degradation", *DEPTH_EXPERIMENTS))
    require(runs, names, least="one")
    paper = {f"resnet{d}": PAPER_TABLE6[d][1] for d in (20, 56)} | PAPER_FIG6_PLAIN
    rows, done = [], finished(runs)
    for name in names:
        run = done.get(name)
        test = ends(run) if run is not None else pd.Series(dtype=float)
        train = ends(run, "train_err") if run is not None else pd.Series(dtype=float)
        mean, std, n = REPRODUCTION_TEST_ERR[name]
        rows.append(
            {
                "run": name,
                "params": runs[name].params.iloc[-1] if name in runs else pd.NA,
                "train_err": train.mean(),
                "train_err_std": train.std(),
                "test_err": test.mean(),
                "test_err_std": test.std(),
                "n": len(test),
                "paper_test_err": paper[name],
                "paper_from": "Fig. 6, read off" if name in PAPER_FIG6_PLAIN else "Table 6",
                "reproduction_test_err": mean,
                "reproduction_test_err_std": std,
                "reproduction_test_err_n": n,
                "diff_paper": test.mean() - paper[name],
                "diff_reproduction": test.mean() - mean,
            }
        )
    table = pd.DataFrame(rows).astype({"params": "Int64"})
    sample = pd.concat(runs.values())
    seeds = "mean ± std (n seeds)" if several_seeds(sample) else f"one run (seed {sample.seed.dropna().iloc[0]:.0f})"
    table.attrs["note"] = title_of(
        sample,
        f"CIFAR-10 error (%), final epoch; ours: {seeds} on {', '.join(sample.dataset.dropna().unique())}; paper: "
        f"Table 6, the plain nets read off Fig. 6 to about a point; reproduction: github.com/{REPRODUCTION}, mean ± "
        "std of 5 seeds on the original CIFAR-10; diff = our mean - theirs",
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
    err = {
        n: ends(rows, "top1_err_10crop" if ten_crop else "test_err").mean() for n, rows in finished(runs).items()
    }  # seeds: mean
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
        what = (
            f"ours: CIFAR variant (3x3 stem), final test error (%) on {datasets}; the paper's: ImageNet val "
            "top-1, 10-crop. Not comparable"
        )
    elif ten_crop:
        what = (
            f"ours: top-1 error (%) on {datasets}, 10-crop, after the last iteration; the paper's: ImageNet val "
            "top-1, 10-crop"
        )
        for row in rows if not sample.quick.any() else []:  # a quick run's data is not ImageNet
            row["diff_plain"], row["diff_resnet"] = (
                row["plain"] - row["paper_plain"],
                row["resnet"] - row["paper_resnet"],
            )
    else:
        what = (
            f"ours: final test error (%) on {datasets}, single view (centre crop); the paper's: ImageNet val "
            "top-1, 10-crop"
        )
    table = pd.DataFrame(rows)
    table.attrs["note"] = title_of(sample, what, *unfinished(runs))
    return table


def to_markdown(table):
    """A GitHub Markdown table; errors with 2 decimals, params in millions, images/s whole, NaN as a dash, a string
    as it is. A column with a `<column>_std` beside it and a count (`<column>_n`, else `n`) is shown as "mean ± std
    (n)", or the mean alone where n is 1."""

    def cell(column, v):
        if isinstance(v, str):
            return v
        if pd.isna(v):
            return "—"
        if "params" in column:
            return f"{v / 1e6:.2f}M"
        if column == "images_per_second":
            return f"{v:.0f}" if v >= 10 else f"{v:.1f}"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    def count(column):
        return f"{column}_n" if f"{column}_n" in at else "n"

    def spread(row, column):
        mean, std, n = (row[at[c]] for c in (column, f"{column}_std", count(column)))
        return cell(column, mean) if n <= 1 or pd.isna(mean) else f"{mean:.2f} ± {std:.2f} ({n})"

    at = {c: i for i, c in enumerate(table.columns)}
    spreads = [c for c in table.columns if f"{c}_std" in at and count(c) in at]
    hidden = {f"{s}_{part}" for s in spreads for part in ("std", "n")} | ({"n"} if spreads else set())
    columns = [c for c in table.columns if c not in hidden]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(spread(row, c) if c in spreads else cell(c, row[at[c]]) for c in columns) + " |")
    note = table.attrs.get("note")
    return "\n".join(lines + ([f"\n{note}"] if note else [])) + "\n"
