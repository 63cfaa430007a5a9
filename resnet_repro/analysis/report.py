"""What `run` prints and draws when its runs end: the summary table, from the same frame `analysis` reads
(results.load_runs), and the figures of the experiment."""

import warnings
from pathlib import Path

import pandas as pd

from resnet_repro.analysis.results import load_runs, several_seeds
from resnet_repro.analysis.tables import SUMMARY_COLUMNS, runs_table, seeds_table, to_markdown
from resnet_repro.engine import rundir


def summary(jobs, skipped=()):
    """The summary table of the jobs' runs as Markdown: one row per job, in the jobs' order (by run, then seed,
    with a seed column, when they have several seeds); "skipped" for the runs this invocation found done
    already; a run that ended without a row (failed at once, say) with its state and no numbers; then a line
    for each run not done, saying why; then, for several seeds, the mean ± std of each run's (seeds_table)."""
    dirs = [job.run_dir for job in jobs if (Path(job.run_dir) / "config.json").exists()]
    with warnings.catch_warnings():  # a run without a row is listed below, not warned about
        warnings.simplefilter("ignore")
        df = load_runs(*dirs) if dirs else pd.DataFrame()
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


def _empty_row(job, state):
    config_path = Path(job.run_dir) / "config.json"
    params = rundir.read_json(config_path).get("params") if config_path.exists() else None
    return pd.Series({"experiment": job.experiment, "run": job.run, "params": params, "state": state})


def claims(exp_dir):
    """The paper's claims the experiment's runs allow (resnet_repro.analysis.claims, Fig. 7's aside: they need a pass over
    the test set per net; `analysis` checks them), as Markdown: "" when the runs allow none."""
    from resnet_repro.analysis.claims import claims_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load_runs(exp_dir)
    if df.empty:
        return ""
    table = claims_table(df, fig7=False)
    checked = table[~table.verdict.str.startswith(("not run", "cannot check"))]
    checked.attrs = table.attrs
    return to_markdown(checked) if len(checked) else ""


def draw_figures(exp_dir, out):
    from resnet_repro.analysis import cli as analysis

    analysis.draw([exp_dir], out, fig7=False)  # prints what it drew and what it could not
