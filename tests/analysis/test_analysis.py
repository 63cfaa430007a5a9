import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import FULL, MINI, write_run  # noqa: F401  (write_run: other test modules import it from here too)
from resnet_repro import models
from resnet_repro.analysis import cli, figures, inspection, results, tables
from resnet_repro.analysis.cli import compare, draw, final_metrics, load_runs
from resnet_repro.engine import metrics

COLUMNS = list(metrics.COLUMNS)


def lines_by_gid(ax):
    return {line.get_gid(): line for line in ax.get_lines()}


# --- loading -----------------------------------------------------------------------------------


def test_load_runs_is_tidy_typed_and_joined_with_config(tmp_path):
    rows = write_run(tmp_path, "plain20")
    write_run(tmp_path, "resnet20", epochs=3, state=None)
    df = load_runs(tmp_path)
    assert len(df) == 4 + 3
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert {
        c: str(df[c].dtype) for c in ("depth", "epoch", "iteration", "residual", "quick", "seed", "params", "test_err")
    } == {
        "depth": "int64",
        "epoch": "float64",
        "iteration": "int64",
        "residual": "bool",
        "quick": "bool",
        "seed": "Int64",
        "params": "Int64",
        "test_err": "float64",
    }
    plain = df[df.run == "plain20"]
    assert plain.train_err.tolist() == [r["train_err"] for r in rows]
    assert plain.iteration.tolist() == [391, 782, 1173, 1564]
    assert set(plain.dataset) == {FULL} and set(plain.shortcut) == {"A"} and set(plain.commit) == {"1234abc"}
    assert set(plain.path) == {str(tmp_path / "degradation" / "plain20")}
    assert dict(df.groupby("run").state.first()) == {"plain20": "done", "resnet20": "unknown"}
    assert "something_new" not in df.columns


def test_load_runs_accepts_root_experiment_or_run_dir_once_each(tmp_path):
    write_run(tmp_path, "plain20")
    write_run(tmp_path, "plain56")
    run_dir = tmp_path / "degradation" / "plain20"
    assert len(load_runs(tmp_path)) == len(load_runs(tmp_path / "degradation")) == 8
    assert set(load_runs(run_dir).run) == {"plain20"}
    assert len(load_runs(tmp_path, run_dir)) == 8  # overlapping paths: each run once
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_runs(tmp_path / "nowhere")


def _drop_column(text):
    return text.replace("test_loss,", "", 1)


def _letters_in_line_3(text):
    lines = text.splitlines(keepends=True)
    lines[2] = lines[2].replace("0.1,", "abc,", 1)
    return "".join(lines)


def _short_line_2(text):
    lines = text.splitlines(keepends=True)
    lines[1] = ",".join(lines[1].split(",")[:5]) + "\n"
    return "".join(lines)


def _epochs_repeated(text):
    lines = text.splitlines(keepends=True)
    return "".join(lines + [lines[2]])


@pytest.mark.parametrize(
    "corrupt,where",
    [
        (_drop_column, r"line 1: missing columns test_loss"),
        (_letters_in_line_3, r"line 3, column lr: 'abc' is not a number"),
        (_short_line_2, r"line 2: 5 fields, expected 14"),
        (_epochs_repeated, r"line 6: epoch 2 after epoch 4"),
    ],
)
def test_malformed_csv_raises_naming_file_and_line(tmp_path, corrupt, where):
    write_run(tmp_path, "plain20")
    path = tmp_path / "degradation" / "plain20" / "metrics.csv"
    path.write_text(corrupt(path.read_text()))
    with pytest.raises(ValueError) as e:
        load_runs(tmp_path)
    assert str(path) in str(e.value)
    assert re.search(where, str(e.value)), str(e.value)


def test_malformed_json_names_file_and_line(tmp_path):
    write_run(tmp_path, "plain20")
    path = tmp_path / "degradation" / "plain20" / "status.json"
    path.write_text('{"state":\n "done",\n}')
    with pytest.raises(ValueError, match=rf"{path}, line 3: not valid JSON"):
        load_runs(tmp_path)


def test_run_without_epochs_is_left_out_with_a_warning(tmp_path):
    write_run(tmp_path, "plain20")
    write_run(tmp_path, "plain56", state="running")  # no process holds it: read as stopped
    csv_path = tmp_path / "degradation" / "plain56" / "metrics.csv"
    csv_path.write_text(csv_path.read_text().splitlines(keepends=True)[0])  # the header only
    with pytest.warns(UserWarning, match=r"plain56: no epoch in metrics.csv yet \(state: stopped\)"):
        df = load_runs(tmp_path)
    assert set(df.run) == {"plain20"}
    with pytest.raises(results.CannotDraw, match="^missing: plain56$"):
        figures.fig1(df)


# --- per-run numbers ---------------------------------------------------------------------------


def test_final_metrics_are_the_csv_last_and_best_values(tmp_path):
    rows = write_run(tmp_path, "resnet56", epochs=5)
    final = final_metrics(load_runs(tmp_path))
    assert len(final) == 1
    row = final.iloc[0]
    assert row.final_train_err == rows[-1]["train_err"] and row.final_test_err == rows[-1]["test_err"]
    assert row.best_test_err == min(r["test_err"] for r in rows)
    assert row.minutes == pytest.approx(sum(r["epoch_seconds"] for r in rows) / 60)
    assert (row.iterations, row.params, row.state, row.residual, row.depth) == (391 * 5, 56000, "done", True, 56)


def test_compare_matches_by_run_name_and_gives_differences(tmp_path):
    write_run(tmp_path / "a", "plain20", seed=0)
    write_run(tmp_path / "a", "resnet20", seed=0)
    b_rows = write_run(tmp_path / "b", "plain20", seed=1, offset=1.5)
    both = load_runs(tmp_path)
    assert both[both.run == "plain20"].path.nunique() == 2  # same name, told apart by path
    out = compare(load_runs(tmp_path / "a"), load_runs(tmp_path / "b")).set_index("run")
    assert out.loc["plain20", "final_test_err_b"] == b_rows[-1]["test_err"]
    assert out.loc["plain20", "final_test_err_diff"] == pytest.approx(1.5)
    assert out.loc["plain20", "final_train_err_diff"] == pytest.approx(1.5)
    assert (out.loc["plain20", "seed_a"], out.loc["plain20", "seed_b"]) == (0, 1)
    assert np.isnan(out.loc["resnet20", "final_test_err_b"])  # only in a
    write_run(tmp_path / "c", "plain20", experiment="depth", seed=1)  # seeds 0 and 1 of plain20 in `both`: seeds
    with pytest.raises(ValueError, match="several runs named plain20 of one seed"):  # two seed 1s: not seeds
        compare(load_runs(tmp_path), load_runs(tmp_path / "b"))


# --- figures -----------------------------------------------------------------------------------


def test_fig1_plots_the_csv_against_iterations(tmp_path):
    curves = {run: write_run(tmp_path, run, offset=-10) for run in ("plain20", "plain56", "resnet20")}  # end < 20%
    fig = figures.fig1(load_runs(tmp_path))
    left, right = fig.axes
    assert left.get_xlabel() == right.get_xlabel() == "iterations"  # runs shorter than 10k: plain iterations
    assert (left.get_ylabel(), right.get_ylabel()) == ("training error (%)", "test error (%)")
    for ax, column in ((left, "train_err"), (right, "test_err")):
        lines = lines_by_gid(ax)
        assert set(lines) == {f"plain20:{column[:-4]}", f"plain56:{column[:-4]}"}
        for run in ("plain20", "plain56"):
            line = lines[f"{run}:{column[:-4]}"]
            assert list(line.get_xdata()) == [r["iteration"] for r in curves[run]]
            assert list(line.get_ydata()) == [r[column] for r in curves[run]]
        assert ax.get_ylim() == (0, 20)
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["20-layer", "56-layer"]
    assert fig._suptitle is None  # full runs: no title, as the paper


def test_a_run_not_done_is_drawn_on_the_axis_of_its_whole_schedule(tmp_path):
    write_run(tmp_path, "plain20", epochs=24)
    write_run(tmp_path, "plain56", epochs=8, state="interrupted")  # planned: the paper's 64,000 iterations
    write_run(tmp_path, "resnet56", epochs=8)
    df = load_runs(tmp_path)
    for ax in figures.fig1(df).axes:
        assert ax.get_xlabel() == "iter. (1e4)" and ax.get_xlim() == pytest.approx((-6.4 * 0.02, 6.4 * 1.02))
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["20-layer", "56-layer (interrupted)"]
    plain, residual = figures.fig6(df).axes
    assert plain.get_xlim() == residual.get_xlim() == pytest.approx((-6.4 * 0.02, 6.4 * 1.02))
    done = load_runs(tmp_path)[lambda d: d.run != "plain56"]
    _, residual = figures.fig6(done).axes  # all done: the axis ends where the curves do
    assert residual.get_xlabel() == "iterations" and residual.get_xlim()[1] < 24 * 391 * 1.1


def test_curves_of_runs_of_10k_iterations_or_more_use_the_papers_axis(tmp_path):
    curves = {
        run: write_run(tmp_path, run, epochs=30) for run in ("plain20", "plain56")
    }  # 391 x 30 = 11,730 iterations
    left, _ = figures.fig1(load_runs(tmp_path)).axes
    assert left.get_xlabel() == "iter. (1e4)"
    assert list(lines_by_gid(left)["plain56:train"].get_xdata()) == [r["iteration"] / 1e4 for r in curves["plain56"]]


def test_fig6_draws_the_runs_that_exist_dashed_train_bold_test(tmp_path):
    curves = {run: write_run(tmp_path, run, offset=-15) for run in ("plain20", "plain56", "resnet20", "resnet110")}
    left, middle, right = figures.fig6(load_runs(tmp_path)).axes
    assert set(lines_by_gid(left)) == {"plain20:train", "plain20:test", "plain56:train", "plain56:test"}
    assert set(lines_by_gid(middle)) == {"resnet20:train", "resnet20:test", "resnet110:train", "resnet110:test"}
    assert set(lines_by_gid(right)) == {"resnet110:train", "resnet110:test"}
    train, test = lines_by_gid(middle)["resnet110:train"], lines_by_gid(middle)["resnet110:test"]
    assert train.get_linestyle() == "--" and test.get_linestyle() == "-"
    assert test.get_linewidth() > train.get_linewidth()
    assert list(test.get_ydata()) == [r["test_err"] for r in curves["resnet110"]]
    assert (left.get_ylim(), middle.get_ylim(), right.get_ylim()) == ((0, 20), (0, 20), (5, 20))
    assert right.get_title(loc="left") == "not run: ResNet-1202"
    assert left.get_title(loc="left") == "not run: plain-32, plain-44"
    shutil.rmtree(tmp_path / "degradation" / "resnet110")  # no run of the right panel: it is left out
    left, middle = figures.fig6(load_runs(tmp_path)).axes
    assert set(lines_by_gid(middle)) == {"resnet20:train", "resnet20:test"}


def test_fig4_is_labelled_cifar_variant_and_draws_thin_train_bold_test(tmp_path):
    curves = {run: write_run(tmp_path, run, stem="cifar") for run in ("plain18", "plain34", "resnet18", "resnet34")}
    fig = figures.fig4(load_runs(tmp_path))
    assert "CIFAR variant" in fig._suptitle.get_text()
    left, right = fig.axes
    assert set(lines_by_gid(left)) == {"plain18:train", "plain18:test", "plain34:train", "plain34:test"}
    line = lines_by_gid(right)["resnet34:train"]
    assert list(line.get_ydata()) == [r["train_err"] for r in curves["resnet34"]]
    assert line.get_linewidth() < lines_by_gid(right)["resnet34:test"].get_linewidth()


def test_quick_runs_are_labelled_and_not_clipped_to_the_papers_range(tmp_path):
    for run in ("plain20", "plain56"):
        write_run(tmp_path, run, experiment="degradation-quick", quick=True, offset=30)
    fig = figures.fig1(load_runs(tmp_path))
    assert fig._suptitle.get_text() == f"quick run: {MINI}, short schedule"
    assert fig.axes[0].get_ylim()[1] > 40


def test_a_run_of_one_row_is_drawn_as_a_point(tmp_path):
    write_run(tmp_path, "resnet1202", experiment="resnet1202", epochs=1)  # as the 1202-layer quick check
    write_run(tmp_path, "resnet110", experiment="depth")
    right = figures.fig6(load_runs(tmp_path)).axes[-1]
    lines = lines_by_gid(right)
    assert lines["resnet1202:test"].get_marker() == "o" and lines["resnet110:test"].get_marker() == "None"


def test_runs_ending_above_the_papers_range_get_a_range_that_holds_their_ends(tmp_path):
    curves = {run: write_run(tmp_path, run, offset=20) for run in ("plain20", "plain56")}  # a short schedule
    for ax in figures.fig1(load_runs(tmp_path)).axes:
        highest = max(c[-1][k] for c in curves.values() for k in ("train_err", "test_err"))
        assert highest == pytest.approx(43.6) and ax.get_ylim() == (0, 70)  # 1.5 x 43.6, rounded up to tens


def test_runs_of_a_shorter_schedule_than_the_papers_say_so_in_the_title(tmp_path):
    for run in ("plain20", "plain56"):
        write_run(tmp_path, run, planned_iterations=8000)
    assert (
        figures.fig1(load_runs(tmp_path))._suptitle.get_text()
        == f"{FULL}, 8,000 iterations (1/8 of the paper's 64,000)"
    )
    # finetune is not one of the paper's experiments: no schedule to compare with
    write_run(tmp_path, "resnet20", experiment="finetune", planned_iterations=2000)
    summary = tables.summary_table(load_runs(tmp_path))
    assert summary.attrs["note"].count("iterations (1/") == 1


def test_fig_depth_plots_final_errors_against_depth(tmp_path):
    curves = {run: write_run(tmp_path, run) for run in ("plain20", "plain56", "resnet20", "resnet56", "resnet110")}
    left, right = figures.fig_depth(load_runs(tmp_path)).axes
    plain = lines_by_gid(left)
    assert [t.get_text() for t in left.get_xticklabels()] == ["20", "56", "110"]
    assert list(plain["plain:train"].get_xdata()) == [0, 1]  # at the ticks of 20 and 56
    assert list(plain["plain:train"].get_ydata()) == [
        curves["plain20"][-1]["train_err"],
        curves["plain56"][-1]["train_err"],
    ]
    assert list(lines_by_gid(right)["resnet:test"].get_ydata()) == [
        curves[r][-1]["test_err"] for r in ("resnet20", "resnet56", "resnet110")
    ]
    assert (left.get_title(), right.get_title()) == ("plain", "ResNet")
    highest = max(c[-1][k] for c in curves.values() for k in ("train_err", "test_err"))
    assert right.get_ylim()[1] > highest and left.get_ylim() == right.get_ylim()  # no point cut off in either panel


def test_fig_depth_needs_two_depths_and_names_an_empty_panel(tmp_path):
    write_run(tmp_path, "resnet20")
    with pytest.raises(results.CannotDraw, match=r"a second depth \(only 20 has run to its end\)"):
        figures.fig_depth(load_runs(tmp_path))
    write_run(tmp_path, "resnet56")
    left, right = figures.fig_depth(load_runs(tmp_path)).axes
    assert [t.get_text() for t in left.texts] == ["no plain run"] and not right.texts
    assert list(lines_by_gid(right)["resnet:test"].get_xdata()) == [0, 1]


def test_fig_depth_leaves_out_runs_not_done_and_names_them(tmp_path):
    """A run still training has a last row, not a final error: plain-20 at epoch 24 beside plain-56 at epoch 8
    would draw a slope that is only their progress."""
    write_run(tmp_path, "plain20", epochs=24, state="interrupted")
    write_run(tmp_path, "plain56", epochs=8, state="interrupted")
    done = {run: write_run(tmp_path, run) for run in ("resnet20", "resnet56")}
    fig = figures.fig_depth(load_runs(tmp_path))
    left, right = fig.axes
    assert [t.get_text() for t in left.texts] == ["no plain run done yet"]
    assert all(len(line.get_ydata()) == 0 for line in left.lines)
    assert list(lines_by_gid(right)["resnet:test"].get_ydata()) == [done[r][-1]["test_err"] for r in done]
    title = fig._suptitle.get_text().replace("\n", " ")
    assert (
        "left out, not done: plain20 (interrupted, iteration 9,384 of 64,000), plain56 (interrupted, iteration" in title
    )
    with pytest.raises(results.CannotDraw, match="not done: plain20, plain56"):
        figures.fig_depth(load_runs(tmp_path)[lambda d: d.run.str.startswith("plain")])


def test_fig7_draws_network_order_and_sorted(tmp_path):
    stds = {"plain20": [0.5, 2.0, 1.0], "resnet20": [1.0, 0.2, 0.7]}
    top, bottom = inspection.fig7(stds).axes
    assert list(lines_by_gid(top)["plain20:order"].get_ydata()) == [0.5, 2.0, 1.0]
    assert list(lines_by_gid(bottom)["plain20:sorted"].get_ydata()) == [2.0, 1.0, 0.5]
    assert list(lines_by_gid(bottom)["resnet20:sorted"].get_xdata()) == [1, 2, 3]
    assert lines_by_gid(top)["plain20:order"].get_linestyle() == "--"
    assert bottom.get_xlabel() == "layer index (sorted by magnitude)"


# --- Fig. 7's numbers --------------------------------------------------------------------------


def fixed_weights(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def responses_by_hand(model, x):
    """The BN outputs after every 3x3 conv, by a functional re-run of the CIFAR net in eval mode."""

    def conv_bn(conv, bn, t):
        t = F.conv2d(t, conv.weight, None, conv.stride, conv.padding)
        return (t - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt() * bn.weight[
            :, None, None
        ] + bn.bias[:, None, None]

    out = [conv_bn(model.conv1, model.bn1, x)]
    h = out[-1].relu()
    for block in [*model.layer1, *model.layer2, *model.layer3]:
        out.append(conv_bn(block.conv1, block.bn1, h))
        out.append(conv_bn(block.conv2, block.bn2, out[-1].relu()))
        y = out[-1] + (h if block.downsample is None else block.downsample(h)) if block.residual else out[-1]
        h = y.relu()
    return out


@pytest.mark.parametrize("name", ["plain8", "resnet8"])
def test_layer_response_std_equals_hand_computation(name):
    model = fixed_weights(models.build_model(name))
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        by_hand = responses_by_hand(model, images)
    # per channel: population std over N*H*W; then the mean over channels
    expected = [r.transpose(0, 1).flatten(1).std(dim=1, unbiased=False).mean().item() for r in by_hand]
    assert len(expected) == len(models.response_points(model)) == 7
    got = inspection.layer_response_std(model, images, batch_size=4)  # 2 batches: running sums across them
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(inspection.layer_response_std(model, images, batch_size=6), rel=1e-9)
    assert len(set(np.round(got, 6))) == 7  # the layers do differ, so the order is checked too


# --- draw, tables, command line ---------------------------------------------------------------


def test_draw_writes_what_it_can_and_names_what_is_missing(tmp_path, capsys):
    curves = {run: write_run(tmp_path, run) for run in ("plain20", "plain56", "resnet20", "resnet56")}
    out = tmp_path / "figs"
    result = draw([tmp_path / "degradation"], out, fig7=False)
    for name in ("fig1", "fig6", "depth"):
        assert result[name] == [out / f"{name}.png", out / f"{name}.pdf"]
        assert all(p.stat().st_size > 1000 for p in result[name])
    assert result["fig4"] == "missing: plain18, plain34, resnet18, resnet34"
    assert result["table2"] == "missing: plain18, plain34, resnet18, resnet34"
    assert result["fig7"] == "skipped"
    printed = capsys.readouterr().out
    assert "fig4: not drawn, missing: plain18, plain34, resnet18, resnet34" in printed
    assert "fig6.png" in printed and "without plain32, plain44, resnet32" in printed

    table = pd.read_csv(out / "table6.csv").set_index("depth")
    assert list(table.index) == [20, 32, 44, 56, 110, 1202]
    assert table.loc[20, "test_err"] == curves["resnet20"][-1]["test_err"]
    assert table.loc[56, "best_test_err"] == min(r["test_err"] for r in curves["resnet56"])
    assert table.loc[56, "paper_test_err"] == 6.97 and table.loc[56, "params"] == 56000
    assert table.loc[20, "diff"] == pytest.approx(curves["resnet20"][-1]["test_err"] - 8.75)
    assert np.isnan(table.loc[110, "test_err"])
    markdown = (out / "table6.md").read_text()
    assert f"| 20 | 0.02M | {curves['resnet20'][-1]['test_err']:.2f} |" in markdown and "| 8.75 |" in markdown

    summary = pd.read_csv(out / "summary.csv").set_index("run")
    assert summary.loc["plain56", "final_train_err"] == curves["plain56"][-1]["train_err"]
    assert summary.loc["plain56", "minutes"] == pytest.approx(sum(r["epoch_seconds"] for r in curves["plain56"]) / 60)
    assert summary.loc["plain56", "images_per_second"] == 5000.0  # the median of the rows'
    assert "| plain56 |" in (out / "summary.md").read_text() and "| 5000 |" in (out / "summary.md").read_text()


def test_draw_reports_everything_missing_without_raising(tmp_path):
    (tmp_path / "empty").mkdir()
    result = draw(tmp_path / "empty", tmp_path / "figs")
    assert result["fig1"] == "missing: plain20, plain56"
    assert result["fig7"] == "missing: " + ", ".join(inspection.FIG7_RUNS)
    assert result["summary"] == "missing: any run"
    assert not list((tmp_path / "figs").glob("*.png"))


def test_draw_puts_quick_runs_apart_and_labels_them(tmp_path):
    for run in ("plain20", "plain56"):
        write_run(tmp_path, run)
        write_run(tmp_path, run, experiment="degradation-quick", quick=True)
    result = draw(tmp_path, tmp_path / "figs", fig7=False)
    assert result["fig1"] == [tmp_path / "figs" / "fig1.png", tmp_path / "figs" / "fig1.pdf"]
    assert result["quick/fig1"] == [tmp_path / "figs" / "quick" / "fig1.png", tmp_path / "figs" / "quick" / "fig1.pdf"]
    assert "quick run" in (tmp_path / "figs" / "quick" / "summary.md").read_text()
    assert "quick run" not in (tmp_path / "figs" / "summary.md").read_text()
    only_quick = draw(tmp_path / "degradation-quick", tmp_path / "q", fig7=False)
    assert only_quick["quick/fig1"][0] == tmp_path / "q" / "quick" / "fig1.png" and "fig1" not in only_quick


def test_draw_puts_runs_of_a_shorter_schedule_apart_by_length(tmp_path):
    for run in ("plain20", "plain56", "resnet20"):
        write_run(tmp_path / "short", run, planned_iterations=8000)
    write_run(tmp_path / "full", "resnet20")  # the paper's 64,000
    result = draw(tmp_path, tmp_path / "figs", fig7=False)
    short = tmp_path / "figs" / "8000-iterations"
    assert result["8000-iterations/fig1"] == [short / "fig1.png", short / "fig1.pdf"]
    assert result["fig1"] == "missing: plain20, plain56"  # the paper's schedule has no plain run
    assert result["table6"] == [tmp_path / "figs" / "table6.md", tmp_path / "figs" / "table6.csv"]
    assert "1/8 of the paper's" in (short / "table6.md").read_text()
    assert "1/8" not in (tmp_path / "figs" / "table6.md").read_text()


def test_tables_name_the_runs_that_are_not_done(tmp_path):
    write_run(tmp_path, "resnet20", state="running")  # its process is gone: read as stopped
    write_run(tmp_path, "resnet56")
    for run in ("plain18", "resnet34"):
        write_run(tmp_path, run, state="interrupted", planned_iterations=8000)
    df = load_runs(tmp_path)
    (residual,) = figures.fig6(df).axes  # no plain net: the residual panel alone
    assert [t.get_text() for t in residual.get_legend().get_texts()][:2] == ["ResNet-20 (stopped)", "ResNet-56"]
    note = tables.table6(df).attrs["note"]
    assert note.endswith("; left out, not done: resnet20 (stopped, iteration 1,564 of 64,000)")
    assert (
        "left out, not done: plain18 (interrupted, iteration 1,564 of 8,000), resnet34 ("
        in tables.table2(df).attrs["note"]
    )
    assert "not done" not in tables.table6(df[df.run != "resnet20"]).attrs["note"]
    # a last row of a run still training is not a final error: blank beside the paper, params kept
    table6 = tables.table6(df).set_index("depth")
    assert table6.loc[20, ["test_err", "best_test_err", "diff"]].isna().all() and table6.loc[20, "params"] > 0
    assert table6.loc[56, "test_err"] == df[df.run == "resnet56"].test_err.iloc[-1]
    assert pd.isna(tables.table2(df).set_index("layers").loc[18, "plain"])  # plain18 is not done


def test_plain_vs_residual_sets_the_four_nets_beside_the_paper_and_the_reproduction(tmp_path):
    ours = {run: write_run(tmp_path, run) for run in ("plain20", "plain56", "resnet20")}
    write_run(tmp_path, "resnet56", state="interrupted")
    table = tables.plain_vs_residual(load_runs(tmp_path)).set_index("run")
    assert list(table.index) == ["plain20", "plain56", "resnet20", "resnet56"]
    plain56 = table.loc["plain56"]
    assert (plain56.train_err, plain56.test_err) == (ours["plain56"][-1]["train_err"], ours["plain56"][-1]["test_err"])
    assert (plain56.paper_test_err, plain56.paper_from) == (13.0, "Fig. 6, read off")
    assert (plain56.reproduction_test_err, plain56.reproduction_test_err_std) == (12.95, 0.22)
    assert plain56.diff_reproduction == pytest.approx(ours["plain56"][-1]["test_err"] - 12.95)
    assert (table.loc["resnet20"].paper_test_err, table.loc["resnet20"].paper_from) == (8.75, "Table 6")
    assert list(table.paper_test_err) == [9.0, 13.0, 8.75, 6.97]
    assert list(table.reproduction_test_err) == [9.78, 12.95, 8.51, 7.40]
    markdown = tables.to_markdown(tables.plain_vs_residual(load_runs(tmp_path)))
    assert "| 9.78 ± 0.13 (5) |" in markdown and "_std" not in markdown and "| n |" not in markdown
    note = tables.plain_vs_residual(load_runs(tmp_path)).attrs["note"]
    assert "ours: one run (seed 0)" in note and "original CIFAR-10" in note
    assert note.endswith("left out, not done: resnet56 (interrupted, iteration 1,564 of 64,000)")
    assert table.loc["resnet56"][["train_err", "test_err", "diff_paper", "diff_reproduction"]].isna().all()
    assert table.loc["resnet56"].params > 0


def test_plain_vs_residual_gives_our_seeds_mean_and_std_and_leaves_missing_nets_blank(tmp_path):
    ends = []
    for seed, folder in ((0, "plain20"), (1, "plain20-seed1")):
        rows = write_run(tmp_path / f"s{seed}", "plain20", seed=seed, offset=2.0 * seed)
        (tmp_path / "runs" / "degradation").mkdir(parents=True, exist_ok=True)
        shutil.move(tmp_path / f"s{seed}" / "degradation" / "plain20", tmp_path / "runs" / "degradation" / folder)
        ends.append(rows[-1]["test_err"])
    made = tables.plain_vs_residual(load_runs(tmp_path / "runs"))
    table = made.set_index("run")
    assert table.loc["plain20"].n == 2 and table.loc["plain20"].test_err == pytest.approx(np.mean(ends))
    assert table.loc["plain20"].test_err_std == pytest.approx(np.std(ends, ddof=1))
    assert table.loc["resnet56"].isna()[["params", "test_err", "diff_paper"]].all()
    assert f"| {np.mean(ends):.2f} ± {np.std(ends, ddof=1):.2f} (2) | 9.00 |" in tables.to_markdown(made)
    assert "ours: mean ± std (n seeds)" in made.attrs["note"]
    with pytest.raises(results.CannotDraw, match="missing"):
        tables.plain_vs_residual(load_runs(tmp_path / "runs").iloc[:0])


def test_draw_reports_ambiguous_run_names(tmp_path):
    write_run(tmp_path / "a", "plain20")
    write_run(tmp_path / "b", "plain20")
    write_run(tmp_path / "b", "plain56")
    result = draw(tmp_path, tmp_path / "figs", fig7=False)
    assert result["fig1"].startswith("ambiguous: plain20 in ") and result["depth"].startswith("ambiguous: plain20 in ")


def test_runs_of_several_experiments_are_taken_from_the_one_each_figure_belongs_to(tmp_path):
    degradation = {run: write_run(tmp_path, run) for run in ("plain20", "plain56", "resnet20")}
    depth = {
        run: write_run(tmp_path, run, experiment="depth", offset=1.0) for run in ("plain20", "plain32", "resnet20")
    }
    df = load_runs(tmp_path)
    left, _ = figures.fig1(df).axes  # Fig. 1 is degradation's
    assert list(lines_by_gid(left)["plain20:train"].get_ydata()) == [r["train_err"] for r in degradation["plain20"]]
    plain, residual = figures.fig6(df).axes  # Fig. 6 is the depth study's
    assert list(lines_by_gid(plain)["plain20:train"].get_ydata()) == [r["train_err"] for r in depth["plain20"]]
    assert "plain56:train" in lines_by_gid(plain)  # what depth lacks comes from degradation
    assert tables.table6(df).set_index("depth").loc[20, "test_err"] == depth["resnet20"][-1]["test_err"]
    plain_depth = {line.get_gid(): line for line in figures.fig_depth(df).axes[0].lines}["plain:train"]
    assert list(plain_depth.get_ydata()) == [
        depth["plain20"][-1]["train_err"],
        depth["plain32"][-1]["train_err"],
        degradation["plain56"][-1]["train_err"],
    ]


def test_table2_says_cifar_variant_is_not_comparable(tmp_path):
    curves = {run: write_run(tmp_path, run, stem="cifar") for run in ("plain18", "plain34", "resnet34")}
    table = tables.table2(load_runs(tmp_path)).set_index("layers")
    assert table.loc[34, "resnet"] == curves["resnet34"][-1]["test_err"]
    assert table.loc[18, "plain"] == curves["plain18"][-1]["test_err"] and np.isnan(table.loc[18, "resnet"])
    assert (table.loc[34, "paper_plain"], table.loc[34, "paper_resnet"]) == (28.54, 25.03)
    assert not any("diff" in c for c in table.columns)
    markdown = tables.to_markdown(table.reset_index())
    assert "CIFAR variant" in markdown and "Not comparable" in markdown


def test_table2_takes_the_ten_crop_test_of_imagenet_runs(tmp_path):
    for i, run in enumerate(("plain18", "plain34", "resnet18", "resnet34")):
        write_run(tmp_path, run, experiment="imagenet18_34", stem="imagenet")
        (tmp_path / "imagenet18_34" / run / "evaluation.json").write_text(
            json.dumps({"views": 10, "top1_err": 30.0 - i, "top5_err": 10.0 - i})
        )
    df = load_runs(tmp_path)
    assert df.groupby("run").top1_err_10crop.first().to_dict() == {
        "plain18": 30.0,
        "plain34": 29.0,
        "resnet18": 28.0,
        "resnet34": 27.0,
    }
    assert (df.top5_err_10crop.groupby(df.run).first() == df.top1_err_10crop.groupby(df.run).first() - 20).all()
    table = tables.table2(df).set_index("layers")
    assert (table.loc[18, "plain"], table.loc[34, "resnet"]) == (30.0, 27.0)
    assert table.loc[34, "diff_resnet"] == pytest.approx(27.0 - 25.03)
    assert "10-crop, after the last iteration" in table.attrs["note"]
    (tmp_path / "imagenet18_34" / "resnet34" / "evaluation.json").unlink()  # one run without: all single view
    table = tables.table2(load_runs(tmp_path)).set_index("layers")
    assert np.isnan(load_runs(tmp_path).query("run == 'resnet34'").top1_err_10crop).all()
    assert "diff_resnet" not in table.columns and "single view" in table.attrs["note"]


def test_draw_fig7_from_final_weights(tmp_path, monkeypatch, capsys):
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    weights = {}
    for run in ("plain20", "resnet20"):
        write_run(tmp_path, run)
        run_dir = tmp_path / "degradation" / run
        weights[run] = fixed_weights(models.build_model(run), seed=len(weights))
        config = json.loads((run_dir / "config.json").read_text())
        torch.save({"model": weights[run].state_dict(), "config": config}, run_dir / "final.pt")
    write_run(tmp_path, "resnet56")  # no final.pt: drawn without it
    sources = []
    test_split = SimpleNamespace(eval_batches=lambda mean, batch_size, device: iter([(images, None)]))
    monkeypatch.setattr(
        inspection,
        "test_data",
        lambda config, device: sources.append(config["data"]) or SimpleNamespace(test=test_split, mean=None),
    )
    result = draw(tmp_path, tmp_path / "figs", device="cpu")
    assert result["fig7"] == [tmp_path / "figs" / n for n in ("fig7.csv", "fig7.png", "fig7.pdf")]
    fig7_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fig7: "))
    assert fig7_line.endswith("fig7.pdf (without plain56, resnet56, resnet110)")
    assert sources == ["cifar10"]  # the test set is loaded once, from the runs' config
    table = pd.read_csv(tmp_path / "figs" / "fig7.csv")
    for run, model in weights.items():
        expected = inspection.layer_response_std(model, images)
        assert table[table.run == run]["std"].tolist() == pytest.approx(expected, rel=1e-6)
        assert table[table.run == run].module.tolist() == models.response_points(model)


def test_cli_help_teaches_and_run_prints_drawn_missing_and_summary(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert "examples:" in capsys.readouterr().out
    rows = write_run(tmp_path, "plain20")
    write_run(tmp_path, "plain56")
    assert cli.main([str(tmp_path), "--out", str(tmp_path / "figs"), "--no-fig7"]) == 0
    printed = capsys.readouterr().out
    assert "fig1.png" in printed and "fig4: not drawn, missing: plain18" in printed
    assert f"| degradation | plain20 | 0.02M | {rows[-1]['train_err']:.2f} |" in printed
    with pytest.raises(SystemExit) as e:
        cli.main([str(tmp_path / "nowhere")])
    assert e.value.code == 2


def test_compare_draws_the_curves_of_several_result_folders_with_seaborn(tmp_path, capsys):
    a = {run: write_run(tmp_path / "a", run) for run in ("plain20", "resnet20")}
    b = {run: write_run(tmp_path / "b", run, offset=5.0) for run in ("plain20", "resnet20")}
    out = tmp_path / "cmp.png"
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert out.exists()
    printed = capsys.readouterr().out
    assert "final_train_err_a" in printed and "plain20" in printed
    fig = figures.fig_compare({"a": load_runs(tmp_path / "a"), "b": load_runs(tmp_path / "b")})
    left, right = fig.axes
    curves = sorted(tuple(line.get_ydata()) for line in left.lines if len(line.get_ydata()) > 1)
    expected = sorted(tuple(r["train_err"] for r in rows) for rows in [*a.values(), *b.values()])
    assert curves == expected  # one line per run and folder, the CSV's values
    assert left.get_legend() is None  # one legend for both panels
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert {"plain-20", "ResNet-20", "a", "b"} <= set(labels)


def test_a_run_whose_config_lost_its_name_is_named_when_left_out(tmp_path):
    write_run(tmp_path, "plain20")
    write_run(tmp_path, "resnet20")
    path = tmp_path / "degradation" / "resnet20" / "config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "run"}))
    with pytest.warns(UserWarning, match=r"config.json: no 'run' in it \(damaged\?\); .*resnet20 left out"):
        frame = results.load_runs(tmp_path)
    assert set(frame.run) == {"plain20"}


def test_the_end_of_a_run_loads_its_runs_once_and_checks_the_claims_once(tmp_path, monkeypatch, capsys):
    from resnet_repro.analysis import claims, report

    for run in ("plain20", "plain56", "resnet20"):
        write_run(tmp_path / "res", run)
    exp_dir = tmp_path / "res" / "degradation"
    jobs = [
        SimpleNamespace(run=r, name=r, experiment="degradation", run_dir=str(exp_dir / r), spec=SimpleNamespace(seed=0))
        for r in ("plain20", "plain56")
    ]
    loads, checks = [], []
    for module in (report, cli):
        monkeypatch.setattr(module, "load_runs", lambda *paths: loads.append(paths) or results.load_runs(*paths))
    check = claims.check
    monkeypatch.setattr(claims, "check", lambda *a: checks.append(a) or check(*a))
    report.finish(jobs, {"plain56"}, exp_dir, tmp_path / "figs")
    out = capsys.readouterr().out
    assert len(loads) == 1 and len(checks) == len(claims.CLAIMS)
    summary = [line.split(" | ")[1] for line in out.splitlines() if line.startswith("| degradation |")]
    assert summary == ["plain20", "plain56"] and "| skipped |" in out  # the jobs' runs only
    assert "The paper's claims on these runs" in out and "fig1: " in out
    table = claims.claims_table(results.load_runs(exp_dir), fig7=False)
    assert (tmp_path / "figs" / "claims.md").read_text() == tables.to_markdown(table)
