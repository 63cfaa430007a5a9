"""Seeds: `--seeds` trains every run once per seed into directories of its own (seed 0 where runs always went),
and the analysis gives a run of several seeds as their mean ± std: seed_summary, bands in the figures,
"mean ± std (n)" in the tables. One seed is drawn and tabulated as before."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_run
from resnet_repro import run
from resnet_repro.analysis import figures, results, tables
from resnet_repro.config import Experiment, TrainSpec
from resnet_repro.launch import plan

# --- planning --------------------------------------------------------------------------------


def test_seeds_are_a_list_a_range_or_both_in_the_order_given():
    assert plan.parse_seeds("0,1,2") == [0, 1, 2]
    assert plan.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert plan.parse_seeds("3, 0-2,7,1") == [3, 0, 1, 2, 7]  # each once
    for bad in ("", "a", "1,,2", "3-1", "-1", "0-99999"):
        with pytest.raises(ValueError, match="--seeds"):
            plan.parse_seeds(bad)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--seed", "1", "--seeds", "0,1"], "not allowed with argument --seed"),
        (["--seeds", "0,1", "--set", "seed=3"], "--seeds and --set seed=N exclude each other"),
        (["--seeds", "2-1"], "--seeds 2-1: 2-1 is not a range"),
    ],
)
def test_seed_options_that_contradict_are_usage_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        run.parse_args(["degradation", *argv])
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_a_job_per_run_and_seed_seed_0_where_runs_always_went():
    spec = TrainSpec(model="resnet20", iterations=10)
    exp = Experiment("degradation", "", {"plain20": TrainSpec(model="plain20"), "resnet20": spec})
    jobs = plan.plan_jobs(exp, "out", ["cuda:0", "cuda:1"], {}, seeds=[0, 1, 2])
    assert [(j.run, j.spec.seed, j.name) for j in jobs[:3]] == [
        ("plain20", 0, "plain20"),
        ("resnet20", 0, "resnet20"),
        ("plain20", 1, "plain20-seed1"),
    ]  # every run of a seed, then the next seed: a sweep stopped half-way has whole seeds
    assert jobs[-1].run_dir == "out/degradation/resnet20-seed2" and jobs[-1].spec.iterations == 10
    assert {j.device for j in jobs} == {"cuda:0", "cuda:1"}
    assert [j.name for j in plan.plan_jobs(exp, "out", ["cpu"], {})] == ["plain20", "resnet20"]  # the spec's seed
    one = plan.plan_jobs(exp, "out", ["cpu"], {}, seeds=[5])[0]
    assert one.name == "plain20-seed5" and plan.Job.from_json(one.to_json()) == one
    old = json.loads(one.to_json()) | {"run_dir": "results/degradation/plain20"}  # a Job as written before seeds
    assert plan.Job.from_json(json.dumps(old)).name == "plain20"


# --- training: two seeds of a tiny run -------------------------------------------------------


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """A tiny plain/residual pair trained for seeds 0 and 1 through the command line; (out dir, printed summary)."""
    from conftest import write_image_folder

    root = tmp_path_factory.mktemp("seeds")
    write_image_folder(root / "tiny", n_train=32, n_test=8)
    (root / "pair.toml").write_text(f"""
runs = ["plain8", "resnet8"]
[train]
data = "{root / "tiny"}"
batch_size = 16
iterations = 4
milestones = [2, 3]
eval_batch_size = 8
""")
    argv = [str(root / "pair.toml"), "--out", str(root / "res"), "--seeds", "0,1", "--no-figures", "--no-progress"]
    return root, argv


def test_two_seeds_train_into_their_own_directories_and_are_skipped_when_done(two_seeds, capsys):
    root, argv = two_seeds
    assert run.main([*argv, "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    exp_dir = root / "res" / "pair"
    assert sorted(p.name for p in exp_dir.iterdir()) == ["plain8", "plain8-seed1", "resnet8", "resnet8-seed1"]
    for name, seed in (("resnet8", 0), ("resnet8-seed1", 1)):
        config = json.loads((exp_dir / name / "config.json").read_text())
        assert (config["run"], config["seed"]) == ("resnet8", seed)
        assert set(pd.read_csv(exp_dir / name / "metrics.csv").run) == {"resnet8"}  # the CSV's run column: the name
    assert "4 runs (plain8, resnet8 x 2 seeds (0, 1))" in out
    assert "| pair | plain8 | 0 |" in out and "| pair | plain8 | 1 |" in out  # a row per seed, by run
    assert "| 0,1 |" in out and " (2) |" in out  # then the mean ± std (n) of each run
    assert run.main([*argv, "--jobs", "1"]) == 0  # both seeds done: skipped, not trained again
    assert capsys.readouterr().out.count("| skipped |") == 4
    (exp_dir / "resnet8-seed1" / "status.json").write_text('{"state": "interrupted"}')
    assert run.main([*argv, "--jobs", "1"]) == 2  # an unfinished seed needs --resume, as a run does
    assert "unfinished runs resnet8-seed1; pass --resume" in capsys.readouterr().err


def test_the_seeds_of_a_run_differ_and_their_summary_is_their_mean_and_std(two_seeds):
    root, argv = two_seeds
    if not (root / "res" / "pair" / "resnet8-seed1" / "final.pt").exists():
        assert run.main([*argv, "--jobs", "1", "--resume"]) == 0
    df = results.load_runs(root / "res")
    assert sorted(df.drop_duplicates("path").seed) == [0, 0, 1, 1]
    final = results.final_metrics(df)
    assert len(final) == 4
    a, b = (torch.load(root / "res" / "pair" / d / "final.pt")["model"] for d in ("resnet8", "resnet8-seed1"))
    assert not all(torch.equal(a[k], b[k]) for k in a)  # another seed: another init and data order
    summary = results.seed_summary(df).set_index("run")
    ends = final[final.run == "resnet8"].final_test_err
    row = summary.loc["resnet8"]
    assert (row.n, row.seeds) == (2, "0,1")
    assert row.final_test_err_mean == pytest.approx(ends.mean())
    assert row.final_test_err_std == pytest.approx(np.std(ends, ddof=1))
    assert (row.final_test_err_min, row.final_test_err_max) == (ends.min(), ends.max())


# --- analysis of several seeds ---------------------------------------------------------------


def write_seeds(root, run, seeds, experiment="degradation", **kw):
    """write_run for each seed, into <run>/ for seed 0 and <run>-seed<N>/ as --seeds does; {seed: rows}."""
    out = {}
    for seed in seeds:
        out[seed] = write_run(root / f"s{seed}", run, experiment=experiment, seed=seed, offset=2.0 * seed, **kw)
        target = root / experiment / plan.run_dir_name(run, seed)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / f"s{seed}" / experiment / run, target)
    return out


def mean_std(rows_by_seed, column):
    values = np.array([[r[column] for r in rows] for rows in rows_by_seed.values()])
    return values.mean(axis=0), values.std(axis=0, ddof=1)


def test_a_run_of_several_seeds_is_its_mean_in_a_band_of_the_std(tmp_path):
    plain20 = write_seeds(tmp_path, "plain20", [0, 1, 2])
    plain56 = write_seeds(tmp_path, "plain56", [0])
    fig = figures.fig1(results.load_runs(tmp_path))
    left, _ = fig.axes
    line = {ln.get_gid(): ln for ln in left.get_lines()}["plain20:train"]
    mean, std = mean_std(plain20, "train_err")
    assert list(line.get_ydata()) == pytest.approx(mean)
    bands = {c.get_gid(): c for c in left.collections}
    assert set(bands) == {"plain20:train:band"}  # one seed: its own curve, no band
    ys = bands["plain20:train:band"].get_paths()[0].vertices[:, 1]
    assert (ys.min(), ys.max()) == pytest.approx(((mean - std).min(), (mean + std).max()))
    assert list({ln.get_gid(): ln for ln in left.get_lines()}["plain56:train"].get_ydata()) == [
        r["train_err"] for r in plain56[0]
    ]
    assert "mean ± std over 3 seeds: plain20" in fig._suptitle.get_text()


def test_fig6_fig_depth_and_compare_draw_the_seeds_mean_and_spread(tmp_path):
    resnet20 = write_seeds(tmp_path, "resnet20", [0, 1])
    write_seeds(tmp_path, "resnet56", [0, 1])
    df = results.load_runs(tmp_path)
    (residual,) = figures.fig6(df).axes  # the panel of the runs there are: the residual one
    assert {c.get_gid() for c in residual.collections} == {
        f"{r}:{c}:band" for r in ("resnet20", "resnet56") for c in ("train", "test")
    }
    depth = figures.fig_depth(df).axes[1]
    test = {ln.get_gid(): ln for ln in depth.get_lines()}["resnet:test"]
    ends = [rows[-1]["test_err"] for rows in resnet20.values()]
    assert test.get_ydata()[0] == pytest.approx(np.mean(ends))
    assert "resnet:test:sd" in {c.get_gid() for c in depth.collections}
    fig = figures.fig_compare({"seeds": df, "one": results.load_runs(tmp_path / "degradation" / "resnet20")})
    curves = [ln.get_ydata() for ln in fig.axes[0].lines if len(ln.get_ydata()) > 1]
    assert any(np.allclose(c, mean_std(resnet20, "train_err")[0]) for c in curves)  # the mean of the two seeds
    assert any(np.allclose(c, [r["train_err"] for r in resnet20[0]]) for c in curves)  # the one-seed set's own
    assert len(fig.axes[0].collections) >= 1  # seaborn's band (errorbar="sd")


def test_tables_give_mean_std_n_and_table6_the_papers_best_mean_std_form(tmp_path):
    resnet110 = write_seeds(tmp_path, "resnet110", [0, 1, 2], experiment="depth")
    write_seeds(tmp_path, "resnet20", [0], experiment="depth")
    df = results.load_runs(tmp_path)
    table = tables.table6(df).set_index("depth")
    ends = [rows[-1]["test_err"] for rows in resnet110.values()]
    row = table.loc[110]
    assert (row.n, row.best_of_seeds, row.paper_test_err) == (3, min(ends), 6.43)
    assert row.test_err == pytest.approx(np.mean(ends)) and row.test_err_std == pytest.approx(np.std(ends, ddof=1))
    assert row.paper_mean_std == "6.61 ± 0.16 (5)" and row["diff"] == pytest.approx(np.mean(ends) - 6.61)
    markdown = tables.to_markdown(tables.table6(df))
    assert f"| {np.mean(ends):.2f} ± {np.std(ends, ddof=1):.2f} (3) | {min(ends):.2f} |" in markdown
    assert "| 20 | 0.02M | " in markdown and "test_err_std" not in markdown  # one seed: its number alone
    summary = tables.summary_table(df)
    assert list(summary.run) == ["resnet20", "resnet110"] and list(summary.n) == [1, 3]
    train = [rows[-1]["train_err"] for rows in resnet110.values()]
    expected = f"| depth | resnet110 | 0,1,2 | 0.11M | {np.mean(train):.2f} ± {np.std(train, ddof=1):.2f} (3) |"
    assert expected in tables.to_markdown(summary)


def test_one_seed_is_tabulated_as_before(tmp_path):
    write_run(tmp_path, "resnet20")
    df = results.load_runs(tmp_path)
    assert list(tables.summary_table(df).columns) == tables.SUMMARY_COLUMNS
    assert "best_test_err" in tables.table6(df).columns and "n" not in tables.table6(df).columns
    assert "seeds" not in tables.table6(df).attrs["note"] and not results.several_seeds(df)


def test_compare_pairs_seed_with_seed_and_leaves_out_seeds_without_a_pair(tmp_path):
    write_seeds(tmp_path / "a", "plain20", [0, 1, 2])
    write_seeds(tmp_path / "b", "plain20", [0, 1])
    write_seeds(tmp_path / "c", "plain20", [0])
    two = results.compare(results.load_runs(tmp_path / "a"), results.load_runs(tmp_path / "b"))
    assert list(zip(two.seed_a, two.seed_b)) == [(0, 0), (1, 1)] and (two.final_test_err_diff == 0).all()
    one = results.compare(results.load_runs(tmp_path / "a"), results.load_runs(tmp_path / "c"))
    assert list(zip(one.seed_a, one.seed_b)) == [(0, 0)]


def test_two_runs_of_one_name_and_seed_are_still_ambiguous(tmp_path):
    write_run(tmp_path / "x", "plain20")
    write_run(tmp_path / "y", "plain20")
    with pytest.raises(results.CannotDraw, match="ambiguous: plain20"):
        results.select(results.load_runs(tmp_path), ["plain20"])


def test_one_run_and_seed_under_two_result_roots_is_never_two_seeds(tmp_path, capsys):
    for root in ("a", "b"):
        write_run(tmp_path / root, "resnet20")
    frame = results.load_runs(tmp_path / "a", tmp_path / "b")
    assert not results.several_seeds(frame)
    with pytest.raises(results.CannotDraw, match="ambiguous: resnet20 seed 0 is in .*a/degradation/resnet20 and"):
        results.seed_summary(frame)
    assert len(tables.summary_table(frame)) == 2  # a row per run directory, no mean over them
