"""Results: every run's metrics.csv, config.json and status as one tidy pandas frame, and what the figures and
tables (resnet_repro.analysis.figures, resnet_repro.analysis.tables) select from it. Nothing here trains or changes
a run.

- `load_runs(*paths)`: every run under the paths, one row per run and CSV row. A malformed file raises
  ValueError naming the file and line; a cut-off last line (a run killed mid-row) is left out with a warning.
  A run directory with a config but no row yet (just started, or failed before its first row) is left out
  with a warning, so the figures list it as missing.
- `final_metrics(df)` (its numbers: `outcome`), `compare(a, b)`: one row per run directory; two result sets
  side by side.
- `seed_summary(df)`: one row per run and its seeds (`--seeds`): n, mean, std, min and max of its errors.

Runs are found by their run name (`plain20`, `resnet110`, ...): `select` picks, for a name several
experiments ran, the one a figure or table prefers, with all of its seeds (`preferred`: its run directories).
Whether a run is done, and in what state it is, is `run_state` (`not_done`: its run directories that are not).
"""

import math
import statistics
import warnings
from pathlib import Path

import pandas as pd

from resnet_repro.engine import metrics, rundir

# config.json keys joined onto every row; seed and params may be absent (nullable ints)
CONFIG_COLUMNS = {
    "dataset": "object",
    "shortcut": "object",
    "stem": "object",
    "params": "Int64",
    "quick": "bool",
    "seed": "Int64",
    "device": "object",
    "torch": "object",
    "commit": "object",
    "planned_iterations": "Int64",  # the length the run was set to train (config's `iterations`)
}
CONFIG_KEYS = {"planned_iterations": "iterations"}  # columns named apart from their config.json key
# The paper's schedule of each experiment that reproduces one of its figures (Section 4.2; Section 3.4 for ImageNet)
PAPER_ITERATIONS = {
    "degradation": 64_000,
    "depth": 64_000,
    "resnet1202": 64_000,
    "cifar100": 64_000,
    "degradation18_34": 64_000,
    "imagenet18_34": 600_000,
}
# evaluation.json (the 10-crop test at the end of a run with ten_crop) joined onto every row; NaN without one
EVALUATION_COLUMNS = {"top1_err_10crop": "top1_err", "top5_err_10crop": "top5_err"}
DTYPES = {c: {str: "object", int: "int64", bool: "bool", float: "float64"}[t] for c, t in metrics.COLUMNS.items()}
DTYPES |= CONFIG_COLUMNS | {c: "float64" for c in EVALUATION_COLUMNS} | {"state": "object", "path": "object"}
DEPTH_EXPERIMENTS = ("depth", "resnet1202", "degradation")  # where Fig. 6, Table 6 and the depth figure take a run from


class CannotDraw(ValueError):
    """A figure or table cannot be drawn from these runs; the message says why ("missing: plain20")."""


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
    config = rundir.read_json(config_path)
    if "run" not in config:  # a config.json that is not a run's; with a CSV beside it, a run's damaged one
        if csv_path.exists():
            warnings.warn(f"{config_path}: no 'run' in it (damaged?); {run_dir} left out", stacklevel=3)
        return None
    rows = metrics.read_metrics(csv_path, cut_off_ok=True)  # a run killed mid-row: the rows before it
    state = rundir.read_status(run_dir)["state"]
    for column, kind in CONFIG_COLUMNS.items():
        key = CONFIG_KEYS.get(column, column)
        value = config.get(key)
        expected = {"Int64": int, "bool": bool}.get(kind)
        if value is not None and expected and (type(value) is not expected):
            raise ValueError(
                f"{config_path}: {key} must be {'an integer' if expected is int else 'true or false'}, not {value!r}"
            )
    if not rows:
        warnings.warn(f"{run_dir}: no epoch in metrics.csv yet (state: {state}); left out", stacklevel=3)
        return None
    df = pd.DataFrame(rows, columns=list(metrics.COLUMNS))
    for column in CONFIG_COLUMNS:
        df[column] = config.get(CONFIG_KEYS.get(column, column), False if column == "quick" else None)
    evaluation = rundir.read_json(run_dir / "evaluation.json") if (run_dir / "evaluation.json").exists() else {}
    for column, key in EVALUATION_COLUMNS.items():
        df[column] = evaluation.get(key, math.nan)
    df["state"] = state
    df["path"] = str(run_dir)
    return df


FINAL_COLUMNS = {
    "experiment": "object",
    "run": "object",
    "model": "object",
    "depth": "int64",
    "residual": "bool",
    "params": "Int64",
    "final_train_err": "float64",
    "final_test_err": "float64",
    "best_test_err": "float64",
    "minutes": "float64",
    "images_per_second": "float64",
    "iterations": "int64",
    "epochs": "float64",
    "state": "object",
    "quick": "bool",
    "seed": "Int64",
    "device": "object",
    "commit": "object",
    "path": "object",
    "best_train_err": "float64",
    "dataset": "object",
    "planned_iterations": "Int64",
}


def final_metrics(df):
    """One row per run directory (a run and seed): its last epoch's training and test error, its best test and
    training error, wall time (see outcome)."""
    rows = []
    for path, run in df.groupby("path", sort=False):
        run = run.sort_values("epoch")
        last = run.iloc[-1]
        rows.append(
            {
                **last[
                    [
                        "experiment",
                        "run",
                        "model",
                        "depth",
                        "residual",
                        "params",
                        "quick",
                        "seed",
                        "device",
                        "commit",
                        "dataset",
                        "planned_iterations",
                    ]
                ].to_dict(),
                **outcome(run.to_dict("records")),
                "state": run_state(run),
                "epochs": last.epoch,
                "path": path,
                "best_train_err": run.train_err.min(),
            }
        )
    return pd.DataFrame(rows, columns=list(FINAL_COLUMNS)).astype(FINAL_COLUMNS)


SEED_GROUP = ["experiment", "run", "dataset", "planned_iterations"]  # the seeds of one run: same recipe, data, length
SEED_ERRORS = ("final_train_err", "final_test_err", "best_test_err", "best_train_err")


def seed_summary(df):
    """One row per run and its seeds (the run directories of one SEED_GROUP): `n` of them, their `seeds`
    ("0,1,2"), the mean, std (n - 1 in the denominator; NaN for one seed), min and max of each of SEED_ERRORS
    (`final_test_err_mean`, ...), their mean minutes and images/s, their fewest iterations and their states."""
    rows = []
    for keys, runs in final_metrics(df).groupby(SEED_GROUP, sort=False, dropna=False):
        runs = runs.sort_values("seed")
        if runs.seed.duplicated().any():  # one seed in two result sets: counted once or not at all, never twice
            twice = runs[runs.seed.duplicated(keep=False)]
            raise CannotDraw(
                f"ambiguous: {keys[SEED_GROUP.index('run')]} seed {twice.seed.iloc[0]} is in "
                f"{' and '.join(map(str, twice.path))}; summarise one result set at a time"
            )
        row = dict(zip(SEED_GROUP, keys)) | runs.iloc[0][["model", "depth", "residual", "params", "quick"]].to_dict()
        row |= {"n": len(runs), "seeds": ",".join(map(str, runs.seed))}
        for m in SEED_ERRORS:
            row |= {f"{m}_{stat}": runs[m].agg(stat) for stat in ("mean", "std", "min", "max")}
        row |= {
            "minutes": runs.minutes.mean(),
            "images_per_second": runs.images_per_second.mean(),
            "iterations": runs.iterations.min(),
            "state": ", ".join(sorted(set(runs.state))),
        }
        rows.append(row)
    columns = [*SEED_GROUP, "model", "depth", "residual", "params", "quick", "n", "seeds"]
    columns += [f"{m}_{stat}" for m in SEED_ERRORS for stat in ("mean", "std", "min", "max")]
    return pd.DataFrame(rows, columns=columns + ["minutes", "images_per_second", "iterations", "state"])


def several_seeds(df):
    """Whether a run of the frame has several seeds (run directories of one SEED_GROUP)."""
    return bool(len(df)) and df.groupby(SEED_GROUP, dropna=False).seed.nunique().max() > 1


def outcome(rows):
    """A run's numbers from its metrics rows: the last row's iteration, training and test error, the best test error,
    the minutes (sum of the rows' times) and the training images/s (the median of the rows': a row slowed by
    other work on the machine moves it little)."""
    if not rows:
        return {
            "iterations": 0,
            "final_train_err": math.nan,
            "final_test_err": math.nan,
            "best_test_err": math.nan,
            "minutes": 0.0,
            "images_per_second": math.nan,
        }
    return {
        "iterations": rows[-1]["iteration"],
        "final_train_err": rows[-1]["train_err"],
        "final_test_err": rows[-1]["test_err"],
        "best_test_err": min(r["test_err"] for r in rows),
        "minutes": sum(r["epoch_seconds"] for r in rows) / 60,
        "images_per_second": statistics.median(r["images_per_second"] for r in rows),
    }


def compare(a, b):
    """Two result sets (frames from load_runs, or paths) side by side, matched by run name: a run of one seed in
    each set is paired whatever the seeds; a run with several seeds (--seeds) is paired seed with seed, and its
    seeds that only one set has are left out. `<metric>_a`, `<metric>_b` and `<metric>_diff` (= b - a); a run in
    only one set has NaN on the other side."""
    finals = []
    for name, runs in (("a", a), ("b", b)):
        final = final_metrics(runs if isinstance(runs, pd.DataFrame) else load_runs(runs))
        twice = final.run[final.duplicated(["run", "seed"])].unique()
        if len(twice):
            raise ValueError(
                f"result set {name} has several runs named {', '.join(twice)} of one seed; load one experiment per set"
            )
        finals.append(final)
    finals = [_pair_key(final, other) for final, other in (finals, finals[::-1])]
    keys = ["run", "model", "depth", "residual", "pair"]
    metrics = ["final_train_err", "final_test_err", "best_test_err", "minutes", "iterations"]
    context = ["seed", "device", "commit", "state", "path"]
    out = pd.merge(
        finals[0][keys + metrics + context],
        finals[1][keys + metrics + context],
        on=keys,
        how="outer",
        suffixes=("_a", "_b"),
    )
    both = set(finals[0].run) & set(finals[1].run)
    out = out[~(out.run.isin(both) & (out.path_a.isna() | out.path_b.isna()))]  # a seed without its pair
    for m in metrics:
        out[f"{m}_diff"] = out[f"{m}_b"] - out[f"{m}_a"]
    columns = (
        keys[:-1]
        + [f"{m}_{s}" for m in metrics for s in ("a", "b", "diff")]
        + [f"{c}_{s}" for c in context for s in ("a", "b")]
    )
    return out[columns].sort_values(["residual", "depth", "run", "seed_a"], ignore_index=True)


def _pair_key(final, other):
    """final with a `pair` column: -1 for a run of one seed here and at most one in `other`, else its seed."""
    alone = final.run.map(final.run.value_counts()).eq(1) & final.run.map(other.run.value_counts()).fillna(0).le(1)
    return final.assign(pair=final.seed.fillna(0).astype("int64").where(~alone, -1))


def rank(experiment, prefer):
    base = experiment.removesuffix("-quick")
    return prefer.index(base) if base in prefer else len(prefer)


def preferred(df, name, prefer=()):
    """The run directories of `name` in df of the experiment it is taken from: the first of `prefer` that ran it
    (experiments not in `prefer` rank after them; `-quick` counts as its base). A frame of `path`, `experiment`
    and `seed`, by path."""
    runs = df[df.run == name].groupby("path").agg(experiment=("experiment", "first"), seed=("seed", "first"))
    ranks = runs.experiment.map(lambda e: rank(e, prefer))
    return runs[ranks == ranks.min()].reset_index()


def select(df, names, prefer=()):
    """{name: its rows by seed and epoch} for the runs of `names` in df. A name run by several experiments is
    taken from the first of `prefer` (e.g. plain20 of `degradation` for Fig. 1, of `depth` for Fig. 6), with all
    of its seeds there (several run directories: see several_seeds); CannotDraw if two of them have one seed."""
    out = {}
    for name in names:
        chosen = preferred(df, name, prefer)
        if chosen.seed.fillna(0).duplicated().any():
            raise CannotDraw(f"ambiguous: {name} in {', '.join(chosen.path)}; draw one result set at a time")
        rows = df[df.path.isin(chosen.path)]
        if len(chosen) == 1:
            out[name] = rows.sort_values("epoch")
        elif len(chosen):
            out[name] = rows.sort_values(["seed", "epoch"])
    return out


def last_rows(rows):
    """The last row (by epoch) of each run directory in `rows`, in the order they first appear."""
    rows = rows.reset_index(drop=True)
    return rows.iloc[rows.groupby("path", sort=False).epoch.idxmax()]


def not_done(rows):
    """The last rows of the run directories in `rows` that are not done, `state` saying how each stands: its
    status.json's (failed, stopped, ...); a run without one ("unknown") is done once its last row has reached
    its planned iterations (results copied without their status.json)."""
    last = last_rows(rows)
    whole = last.state.eq("unknown") & last.planned_iterations.notna() & last.iteration.ge(last.planned_iterations)
    return last[last.state.ne("done") & ~whole.fillna(False).astype(bool)]


def run_state(rows):
    """The state of a run from its rows (one run directory, or the seeds of one run): "done", or the state of
    the first of its run directories that is not done (see not_done)."""
    late = not_done(rows)
    return late.state.iloc[0] if len(late) else "done"


def reached(last):
    """How far a run directory got, from its last row: "iteration 1,564 of 64,000" (without "of" where its
    planned length is not recorded)."""
    planned = f" of {last.planned_iterations:,}" if pd.notna(last.planned_iterations) else ""
    return f"iteration {last.iteration:,}{planned}"


def unfinished(runs):
    """The note naming the runs of {name: rows} that are not done, with how far they got (the tables beside the
    paper and the final error against depth leave them out: see finished): [] when all are done."""
    late = []
    for name, rows in runs.items():
        several = rows.path.nunique() > 1
        for _, last in not_done(rows).iterrows():
            seed = f"seed {last.seed}, " if several else ""
            late.append(f"{name} ({seed}{last.state}, {reached(last)})")
    return [f"left out, not done: {', '.join(late)}"] if late else []


def finished(runs):
    """{name: rows} of the run directories of `runs` ({name: rows}) that are done: the last row of a run still
    training is not a final error, so what compares final errors leaves it out (and names it: unfinished)."""
    done = {name: rows[~rows.path.isin(not_done(rows).path)] for name, rows in runs.items()}
    return {name: rows for name, rows in done.items() if len(rows)}


def require(found, names, least="all"):
    missing = [n for n in names if n not in found]
    if (least == "all" and missing) or not found:
        raise CannotDraw(f"missing: {', '.join(missing)}")


def shorter_than_paper(df):
    """Per row: not quick, and set to fewer iterations than the paper's schedule of its experiment."""
    return ~df.quick & (df.planned_iterations < df.experiment.map(PAPER_ITERATIONS)).fillna(False)


def title_of(df, *parts):
    """The figure's title: `parts`, and a warning where runs are not the paper's setting: quick runs, and
    runs set to a shorter schedule than the paper's (with their data and length)."""
    quick = df[df.quick]
    if len(quick):
        parts += (f"quick run: {', '.join(quick.dataset.dropna().unique()) or 'small data'}, short schedule",)
    short = df[shorter_than_paper(df)].assign(paper=lambda d: d.experiment.map(PAPER_ITERATIONS))
    short = short.drop_duplicates(["planned_iterations", "paper", "dataset"])
    for planned, paper, dataset in zip(short.planned_iterations, short.paper, short.dataset):
        parts += (f"{dataset}, {planned:,} iterations (1/{paper / planned:.3g} of the paper's {paper:,.0f})",)
    return "; ".join(parts + seeds_note(df))


def seeds_note(df):
    """("mean ± std over 3 seeds: plain56, resnet56",) for the runs of df with several seeds; () if none has."""
    if not several_seeds(df):
        return ()
    n = df.groupby(SEED_GROUP, dropna=False, sort=False).agg(run=("run", "first"), n=("path", "nunique"))
    by_n = n[n.n > 1].groupby("n").run.agg(lambda r: ", ".join(dict.fromkeys(r)))
    return tuple(f"mean ± std over {k} seeds: {runs}" for k, runs in by_n.items())
