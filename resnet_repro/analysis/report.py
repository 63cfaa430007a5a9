"""What `run` prints and draws when its runs end (`finish`): the summary table, the paper's claims the runs allow
and the figures of the experiment, all from one frame of its runs (results.load_runs), the claims checked once."""

import warnings
from pathlib import Path

import pandas as pd

from resnet_repro.analysis.results import load_runs, several_seeds
from resnet_repro.analysis.tables import SUMMARY_COLUMNS, runs_table, seeds_table, to_markdown
from resnet_repro.engine import rundir


def finish(jobs, skipped, exp_dir, figures=None):
    """Print the summary of the jobs' runs and the paper's claims the experiment's runs allow, then draw its
    figures into `figures` (None: none; quick runs land in <figures>/quick). The runs under exp_dir are loaded
    once and the claims checked once, but Fig. 7's (they need a pass over the test set per net; `analysis`
    checks them); a run the figures leave out is warned about when they are drawn (the summary lists it)."""
    from resnet_repro.analysis import cli as analysis
    from resnet_repro.analysis.claims import claims_table

    with warnings.catch_warnings(record=True) as left_out:
        warnings.simplefilter("always")
        df = load_runs(exp_dir)
    print(summary(jobs, skipped, df), end="")
    table = claims_table(df, fig7=False) if not df.empty else None
    if checked := allowed_claims(table):
        print(f"\nThe paper's claims on these runs (python -m resnet_repro.analysis claims):\n{checked}", end="")
    if figures is not None:
        for w in left_out:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        analysis.draw(df, figures, fig7=False, claims=table)  # prints what it drew and what it could not


def summary(jobs, skipped, df):
    """The summary table of the jobs' runs as Markdown, from `df` (load_runs of their experiment): one row per
    job, in the jobs' order (by run, then seed, with a seed column, when they have several seeds); "skipped" for
    the runs this invocation found done already; a run that ended without a row (failed at once, say) with its
    state and no numbers; then a line for each run not done, saying why; then, for several seeds, the mean ± std
    of each run's (seeds_table)."""
    df = of_jobs(df, jobs)
    table = runs_table(df) if not df.empty else pd.DataFrame(columns=SUMMARY_COLUMNS)
    seeds = len({job.spec.seed for job in jobs}) > 1
    order = list(dict.fromkeys(job.run for job in jobs))
    jobs = sorted(jobs, key=lambda job: order.index(job.run)) if seeds else jobs
    rows, notes = [], []
    for job in jobs:
        state = rundir.read_status(job.run_dir, absent="not started")
        row = table.loc[job.run_dir] if job.run_dir in table.index else _empty_row(job, state["state"])
        rows.append(row.copy())
        if job.name in skipped:
            rows[-1]["state"] = "skipped"
        elif state["state"] != "done" and state["message"]:
            notes.append(f"{job.name}: {state['state']}: {state['message']}")
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).reset_index(drop=True)
    if seeds:
        out.insert(2, "seed", [job.spec.seed for job in jobs])
    out.attrs = table.attrs
    text = to_markdown(out) + "".join(f"{note}\n" for note in notes)
    return text + (f"\n{to_markdown(seeds_table(df))}" if seeds and several_seeds(df) else "")


def of_jobs(df, jobs):
    """The rows of df of the jobs' run directories, each `path` as its job names it."""
    named = {Path(job.run_dir).resolve(): job.run_dir for job in jobs}
    path = df.path.map({p: named.get(Path(p).resolve()) for p in df.path.unique()})
    return df[path.notna()].assign(path=path[path.notna()]).reset_index(drop=True)


def _empty_row(job, state):
    config_path = Path(job.run_dir) / "config.json"
    params = rundir.read_json(config_path).get("params") if config_path.exists() else None
    return pd.Series({"experiment": job.experiment, "run": job.run, "params": params, "state": state})


def allowed_claims(table):
    """The claims of a claims_table (None: no run) that the runs allow, as Markdown: "" when they allow none."""
    if table is None:
        return ""
    checked = table[~table.verdict.str.startswith(("not run", "cannot check"))]
    checked.attrs = table.attrs
    return to_markdown(checked) if len(checked) else ""
