import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from resnet_repro import models
from resnet_repro.analysis import claims, cli, results, tables
from resnet_repro.analysis.claims import claims_table
from resnet_repro.analysis.results import CannotDraw, load_runs
from resnet_repro.analysis.tables import to_markdown
from resnet_repro.engine import metrics

FULL, MINI = "CIFAR-10 (JPEG q75 copy)", "CIFAR-10 mini (JPEG q75 copy, 500+100 per class)"
EPOCHS = 4


def write_run(root, run, err, experiment="degradation", seed=0, planned=64_000, dataset=FULL, state="done", test=None):
    """A run directory as the engine writes it: EPOCHS rows whose errors fall to `err` (training) and `test`
    (test; default err + 2) at the last row, each row 1 point above the next."""
    kind, depth = models.parse_name(run)
    run_dir = root / experiment / f"{run}-seed{seed}"
    run_dir.mkdir(parents=True)
    test = err + 2 if test is None else test
    rows = [
        {
            "experiment": experiment,
            "run": run,
            "model": run,
            "depth": depth,
            "residual": kind == "resnet",
            "epoch": e,
            "iteration": 100 * e,
            "lr": 0.1,
            "train_loss": 1.0,
            "train_err": err + EPOCHS - e,
            "test_loss": 1.0,
            "test_err": test + EPOCHS - e,
            "epoch_seconds": 1.0,
            "images_per_second": 100.0,
        }
        for e in range(1, EPOCHS + 1)
    ]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(metrics.COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    config = {
        "experiment": experiment,
        "run": run,
        "model": run,
        "depth": depth,
        "residual": kind == "resnet",
        "dataset": dataset,
        "data": "cifar10",
        "quick": dataset == MINI,
        "seed": seed,
        "params": 1000,
        "iterations": planned,
        "num_classes": 10,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "status.json").write_text(json.dumps({"state": state, "message": ""}))
    return run_dir


def row(table, claim_id, group=None):
    rows = table[(table.id == claim_id) & (table.group == group if group else True)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# errors (final training error; test error = it + 2) with which each claim holds; swapped, it does not
HOLDS = {
    "degradation": {"plain20": 10, "plain56": 30},
    "fix56": {"resnet56": 10, "plain56": 30},
    "fix20": {"resnet20": 10, "plain20": 30},
    "depth56": {"resnet56": 10, "resnet20": 30},
    "depth110": {"resnet110": 10, "resnet56": 30},
    "table2-plain": {"plain18": 10, "plain34": 30},
    "table2-resnet": {"resnet34": 10, "resnet18": 30},
    "table2-fix": {"resnet34": 10, "plain34": 30},
}


@pytest.mark.parametrize("claim_id", list(HOLDS))
def test_a_pair_claim_holds_fails_and_is_not_run(tmp_path, claim_id):
    (low, low_err), (high, high_err) = HOLDS[claim_id].items()
    for case, errs in (("holds", (low_err, high_err)), ("fails", (high_err, low_err))):
        write_run(tmp_path / case, low, errs[0])
        write_run(tmp_path / case, high, errs[1])
    write_run(tmp_path / "alone", low, low_err)
    holds = row(claims_table(load_runs(tmp_path / "holds"), fig7=False), claim_id)
    assert holds.verdict == "holds"
    assert f"train +20.00, test +20.00; above in both at {EPOCHS} of {EPOCHS} rows" in holds.margin
    assert (
        holds.runs
        == f"{', '.join(sorted((low, high), key=lambda n: (models.parse_name(n)[1], n)))} (degradation); seed 0"
    )
    fails = row(claims_table(load_runs(tmp_path / "fails"), fig7=False), claim_id)
    assert fails.verdict == "does not hold" and "train -20.00, test -20.00; above in both at 0 of" in fails.margin
    alone = row(claims_table(load_runs(tmp_path / "alone"), fig7=False), claim_id)
    assert alone.verdict == f"not run: {high}" and alone.margin == "—"


def test_table2_claims_take_the_ten_crop_test_where_both_runs_have_one(tmp_path):
    for run, err, top1 in (("plain18", 10, 40.0), ("plain34", 30, 35.0)):
        d = write_run(tmp_path, run, err, experiment="imagenet18_34", planned=600_000)
        (d / "evaluation.json").write_text(json.dumps({"top1_err": top1, "top5_err": 10.0}))
    found = row(claims_table(load_runs(tmp_path), fig7=False), "table2-plain")
    assert found.verdict == "does not hold" and "test (10-crop) -5.00" in found.margin


def test_table6_claims_hold_within_one_point_of_the_paper(tmp_path):
    write_run(tmp_path / "near", "resnet20", 7.0, test=9.5)  # 8.75 in the paper
    write_run(tmp_path / "far", "resnet20", 7.0, test=9.76)
    near = claims_table(load_runs(tmp_path / "near"), fig7=False)
    assert row(near, "table6-20").verdict == "holds" and row(near, "table6-20").margin == "9.50 vs 8.75: +0.75"
    assert row(claims_table(load_runs(tmp_path / "far"), fig7=False), "table6-20").margin == "9.76 vs 8.75: +1.01"
    assert row(claims_table(load_runs(tmp_path / "far"), fig7=False), "table6-20").verdict == "does not hold"
    assert row(near, "table6-56").verdict == "not run: resnet56"
    assert "original CIFAR-10" in row(near, "table6-20").paper and FULL in row(near, "table6-20").group


def test_overfitting_claim_needs_higher_test_and_no_higher_training_error(tmp_path):
    write_run(tmp_path / "holds", "resnet110", 1.0, test=6.5, experiment="depth")
    write_run(tmp_path / "holds", "resnet1202", 1.0, test=8.0, experiment="resnet1202")
    write_run(tmp_path / "fails", "resnet110", 1.0, test=6.5, experiment="depth")
    write_run(tmp_path / "fails", "resnet1202", 1.5, test=8.0, experiment="resnet1202")  # trains worse: not overfitting
    holds = row(claims_table(load_runs(tmp_path / "holds"), fig7=False), "overfit1202")
    assert holds.verdict == "holds" and holds.margin == "ResNet-1202 − ResNet-110: test +1.50, train +0.00"
    assert holds.runs == "resnet110 (depth), resnet1202 (resnet1202); seed 0"
    assert row(claims_table(load_runs(tmp_path / "fails"), fig7=False), "overfit1202").verdict == "does not hold"


def test_depth_order_claims_use_the_depths_run_and_need_two(tmp_path):
    for run, err in (("plain20", 10), ("plain32", 20), ("plain44", 15)):
        write_run(tmp_path, run, err, experiment="depth")
    table = claims_table(load_runs(tmp_path), fig7=False)
    plain = row(table, "plain-depth")
    assert plain.verdict == "does not hold"
    assert plain.margin == "1 of 2 steps in order: plain-20 10.00, plain-32 20.00, plain-44 15.00"
    assert row(table, "resnet-depth").verdict.startswith("not run: needs 2 of resnet20, resnet32")


def fig7_runs(root):
    for run in ("plain20", "resnet20", "resnet56"):
        write_run(root, run, 10)
    return {"plain20": [2.0, 1.0, 3.0], "resnet20": [0.5, 1.5, 2.5], "resnet56": [0.1, 0.2, 0.3, 0.4]}


def test_fig7_claims_from_the_layer_responses(tmp_path):
    stds = fig7_runs(tmp_path)
    responses = lambda run_dir: pd.Series(stds[json.loads((Path(run_dir) / "config.json").read_text())["run"]])  # noqa: E731
    table = claims_table(load_runs(tmp_path), responses=responses)
    below = row(table, "fig7-20")  # sorted: 2.5, 1.5, 0.5 against 3, 2, 1
    assert below.verdict == "holds" and below.margin.startswith("below at 3 of 3 sorted positions; mean 1.500 vs 2.000")
    deeper = row(table, "fig7-depth56")
    assert deeper.verdict == "holds" and deeper.margin.startswith("mean 0.250 vs 1.500 (-1.250)")
    assert row(table, "fig7-56").verdict == "not run: plain56"
    stds["resnet20"] = [3.5, 2.5, 0.5]
    assert row(claims_table(load_runs(tmp_path), responses=responses), "fig7-20").verdict == "does not hold"


def test_fig7_claims_say_why_they_cannot_be_checked(tmp_path):
    fig7_runs(tmp_path)

    def no_weights(run_dir):
        raise CannotDraw(f"{run_dir} has no final.pt")

    table = claims_table(load_runs(tmp_path), responses=no_weights)
    assert (
        row(table, "fig7-20").verdict.startswith("cannot check: ")
        and "has no final.pt" in row(table, "fig7-20").verdict
    )
    skipped = claims_table(load_runs(tmp_path), fig7=False)
    assert row(skipped, "fig7-20").verdict == "cannot check: Fig. 7 not computed (--no-fig7)"


def test_seeds_are_counted_and_a_claim_holds_in_k_of_n(tmp_path):
    for seed, (p20, p56) in enumerate([(10, 30), (30, 10), (10, 25)]):
        write_run(tmp_path, "plain20", p20, seed=seed)
        write_run(tmp_path, "plain56", p56, seed=seed)
    write_run(tmp_path, "plain20", 10, seed=3)  # no twin: not checked
    found = row(claims_table(load_runs(tmp_path), fig7=False), "degradation")
    assert found.verdict == "mixed: holds in 2 of 3 seeds (not checked: seed 3 lacks plain56)"
    assert found.runs == "plain20, plain56 (degradation); seeds 0, 1, 2"
    margins = found.margin.split("; seed ")
    assert (
        margins[0].startswith("seed 0: plain-56 − plain-20: train +20.00")
        and "1: plain-56 − plain-20: train -20.00" in found.margin
    )
    assert len(margins) == 3


def test_schedules_and_datasets_are_checked_apart(tmp_path):
    write_run(tmp_path / "full", "plain20", 10)
    write_run(tmp_path / "full", "plain56", 30)
    write_run(tmp_path / "short", "plain20", 30, planned=8000)
    write_run(tmp_path / "short", "plain56", 10, planned=8000)
    write_run(tmp_path / "quick", "plain20", 10, experiment="degradation-quick", planned=600, dataset=MINI)
    table = claims_table(load_runs(tmp_path), fig7=False)
    full, short = f"{FULL}, 64,000 iterations (the paper's)", f"{FULL}, 8,000 iterations (1/8 of the paper's 64,000)"
    assert list(dict.fromkeys(table.group)) == [full, short, f"quick: {MINI}, 600 iterations"]
    assert row(table, "degradation", full).verdict == "holds"
    assert row(table, "degradation", short).verdict == "does not hold"
    assert row(table, "degradation", f"quick: {MINI}, 600 iterations").verdict == "not run: plain56"
    assert len(table) == 3 * len(claims.CLAIMS)


def test_a_run_not_done_is_not_checked(tmp_path):
    write_run(tmp_path, "plain20", 10)
    write_run(tmp_path, "plain56", 30, state="interrupted")
    found = row(claims_table(load_runs(tmp_path), fig7=False), "degradation")
    assert found.verdict == "not run: plain56 (not done: interrupted at iteration 400 of 64,000)"
    depth = row(claims_table(load_runs(tmp_path), fig7=False), "plain-depth")
    late = "plain56 (not done: interrupted at iteration 400 of 64,000)"
    assert depth.verdict == f"not run: needs 2 of plain20, plain32, plain44, plain56; has plain20; {late}"


def test_claims_table_renders_and_needs_a_run(tmp_path):
    write_run(tmp_path, "plain20", 10)
    markdown = to_markdown(claims_table(load_runs(tmp_path), fig7=False))
    assert markdown.startswith("| group | id | claim | paper | runs | margin | verdict |")
    assert "| not run: plain56 |" in markdown and "mixed = holds in k of n seeds" in markdown
    with pytest.raises(CannotDraw, match="missing: any run"):
        claims_table(load_runs(tmp_path / "degradation").iloc[:0], fig7=False)


def test_claims_command_and_draw_write_claims_beside_the_other_tables(tmp_path, capsys):
    write_run(tmp_path / "r", "plain20", 10)
    write_run(tmp_path / "r", "plain56", 30)
    write_run(tmp_path / "r", "resnet20", 10, experiment="degradation-quick", planned=600, dataset=MINI)
    out = tmp_path / "figs"
    assert cli.main(["claims", str(tmp_path / "r"), "--out", str(out), "--no-fig7"]) == 0
    printed = capsys.readouterr().out
    assert f"claims: {out / 'claims.md'}" in printed and f"quick/claims: {out / 'quick' / 'claims.md'}" in printed
    assert "| plain-56 − plain-20: train +20.00, test +20.00; above in both at 4 of 4 rows | holds |" in printed
    table = pd.read_csv(out / "claims.csv")
    assert row(table, "degradation").verdict == "holds" and (out / "quick" / "claims.md").exists()
    result = cli.draw(tmp_path / "r", tmp_path / "drawn", fig7=False)
    assert result["claims"] == [tmp_path / "drawn" / "claims.md", tmp_path / "drawn" / "claims.csv"]
    assert (tmp_path / "drawn" / "claims.md").read_text() == (out / "claims.md").read_text()


def test_two_runs_of_one_name_and_seed_check_the_first_and_name_the_other(tmp_path):
    for root in ("a", "b"):
        write_run(tmp_path / root, "plain20", 10)
    write_run(tmp_path / "a", "plain56", 30)
    found = row(claims_table(load_runs(tmp_path), fig7=False), "degradation")
    first, other = (str(tmp_path / root / "degradation" / "plain20-seed0") for root in ("a", "b"))
    assert found.verdict == "holds" and found.runs.endswith(f"; seed 0; also found, not used: {other}")
    with pytest.raises(CannotDraw, match=f"ambiguous: plain20 in {first}, {other}"):
        results.select(load_runs(tmp_path), ["plain20"])


def test_a_run_without_a_status_is_done_once_it_reached_its_planned_length(tmp_path):
    for run, err, planned in (("plain20", 10, 400), ("plain56", 30, 400), ("resnet20", 10, 800)):
        (write_run(tmp_path, run, err, planned=planned) / "status.json").unlink()  # 4 rows of 100 iterations
    df = load_runs(tmp_path)
    assert set(df.state) == {"unknown"}
    assert results.run_state(df[df.run == "plain20"]) == "done" and results.run_state(df) == "unknown"
    assert dict(zip(results.final_metrics(df).run, results.final_metrics(df).state)) == {
        "plain20": "done",
        "plain56": "done",
        "resnet20": "unknown",
    }
    assert row(claims_table(df[df.run != "resnet20"], fig7=False), "degradation").verdict == "holds"
    assert "; left out, not done: resnet20 (unknown, iteration 400 of 800)" in tables.table6(df).attrs["note"]


def test_claims_checked_once_are_taken_as_they_are(tmp_path, monkeypatch):
    write_run(tmp_path, "plain20", 10)
    write_run(tmp_path, "plain56", 30)
    write_run(tmp_path, "resnet20", 10, planned=8000)
    df = load_runs(tmp_path)
    table = claims_table(df, fig7=False)
    checks = []
    check = claims.check
    monkeypatch.setattr(claims, "check", lambda *a: checks.append(a) or check(*a))
    full = df[df.planned_iterations == 64_000]
    again = claims_table(full, fig7=False, checked=table)
    assert not checks and again.equals(table[table.group == again.group.iloc[0]].reset_index(drop=True))
    assert again.equals(claims_table(full, fig7=False)) and len(checks) == len(claims.CLAIMS)
    claims_table(full, fig7=True, checked=table, responses=lambda run_dir: pd.Series([1.0]))  # Fig. 7 too: again
    assert len(checks) == 2 * len(claims.CLAIMS)
