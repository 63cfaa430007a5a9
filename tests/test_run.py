import json

import pytest

from conftest import write_image_folder
from resnet_repro import run, tables


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tiny"
    write_image_folder(root, n_train=32, n_test=8)
    return root


def experiment(tmp_path, tiny_dir, extra=""):
    path = tmp_path / "pair.toml"
    path.write_text(f"""
description = "a tiny plain/residual pair"
runs = ["plain8", "resnet8"]
[train]
data = "{tiny_dir}"
batch_size = 16
iterations = 4
milestones = [2, 3]
eval_batch_size = 8
{extra}
""")
    return str(path)


def cli(*argv):
    argv = [*map(str, argv), "--no-progress"]
    return run.main(argv if "--jobs" in argv else [*argv, "--jobs", "1"])  # in this process (the default may be 2)


def test_list_shows_every_experiment_with_its_line(capsys):
    assert cli("--list") == 0
    out = capsys.readouterr().out
    assert "degradation" in out and "Fig. 1" in out and "plain20, plain56, resnet20, resnet56" in out


def test_unknown_experiment_is_a_usage_error_without_traceback(capsys):
    assert cli("nope") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown experiment 'nope'") and "Traceback" not in err


def test_runs_a_pair_prints_a_summary_then_never_redoes_or_overwrites(tmp_path, tiny_dir, capsys):
    exp = experiment(tmp_path, tiny_dir)
    assert cli(exp, "--out", tmp_path / "res", "--no-figures", "--device", "cpu") == 0
    out = capsys.readouterr().out
    table = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == tables.SUMMARY_COLUMNS
    assert table[1][:2] == ["pair", "plain8"] and table[1][-2:] == ["4", "done"] and table[2][1] == "resnet8"
    for r in ("plain8", "resnet8"):
        assert (tmp_path / "res" / "pair" / r / "metrics.csv").exists()
    assert cli(exp, "--out", tmp_path / "res", "--no-figures") == 0  # finished runs are skipped, not redone
    assert capsys.readouterr().out.count("| skipped |") == 2
    (tmp_path / "res" / "pair" / "resnet8" / "status.json").write_text('{"state": "interrupted"}')
    assert cli(exp, "--out", tmp_path / "res", "--no-figures") == 2
    assert "already holds unfinished runs resnet8; pass --resume" in capsys.readouterr().err
    (tmp_path / "res" / "pair" / "resnet8" / "status.json").write_text('{"state": "done"}')
    assert cli(exp, "--out", tmp_path / "res", "--no-figures", "--iterations", "3") == 2
    assert "different config (iterations: 4 -> 3" in capsys.readouterr().err


def test_parallel_mode_checks_done_runs_itself_and_starts_no_process_for_them(tmp_path, tiny_dir, capsys, monkeypatch):
    exp = experiment(tmp_path, tiny_dir)
    assert cli(exp, "--out", tmp_path / "res", "--no-figures") == 0
    capsys.readouterr()

    def no_process(args, name, device):
        raise AssertionError(f"a process was started for {name}, done already")

    monkeypatch.setattr(run, "child_command", no_process)
    assert cli(exp, "--out", tmp_path / "res", "--no-figures", "--jobs", "2", "--resume") == 0
    assert capsys.readouterr().out.count("| skipped |") == 2
    assert cli(exp, "--out", tmp_path / "res", "--no-figures", "--jobs", "2", "--iterations", "3") == 2
    assert "different config (iterations: 4 -> 3" in capsys.readouterr().err


def test_overrides_reach_the_runs(tmp_path, tiny_dir):
    exp = experiment(tmp_path, tiny_dir)
    assert (
        cli(
            exp,
            "--out",
            tmp_path / "res",
            "--no-figures",
            "--runs",
            "resnet8",
            "--seed",
            "7",
            "--iterations",
            "2",
            "--set",
            "lr=0.05",
        )
        == 0
    )
    config = json.loads((tmp_path / "res" / "pair" / "resnet8" / "config.json").read_text())
    assert (config["seed"], config["iterations"], config["lr"], config["milestones"]) == (7, 2, 0.05, [1, 2])
    assert not (tmp_path / "res" / "pair" / "plain8").exists()


def test_a_failing_run_does_not_stop_the_others(tmp_path, tiny_dir, capsys):
    exp = experiment(tmp_path, tiny_dir, extra="[run.plain8]\nlr = 1e30\n")
    assert cli(exp, "--out", tmp_path / "res", "--no-figures") == 1
    captured = capsys.readouterr()
    assert "plain8: FAILED: non-finite loss at iteration" in captured.err
    rows = {line.split("|")[2].strip(): line for line in captured.out.splitlines() if line.startswith("| pair")}
    assert rows["plain8"].endswith("| failed |") and rows["resnet8"].endswith("| done |")
    assert "plain8: failed: non-finite loss" in captured.out


def test_missing_data_is_one_clear_message(tmp_path, capsys):
    assert cli("degradation", "--data", tmp_path / "nowhere", "--out", tmp_path / "res") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "--quick" in err


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "degradation --quick" in out and "--resume" in out and "examples:" in out


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        cli("degradation", "--data", tmp_path / "nowhere", "--out", tmp_path / "res", "--debug")


@pytest.mark.parametrize(
    "text,match",
    [
        ('runs = ["plain20"\n[train]\nlr = 0.1.2\n', "malformed TOML"),
        ('runs = ["resnet21"]\n', "not a model name"),
        ('runs = ["plain20"]\n[train]\nlearning_rate = 1\n', "valid keys are"),
    ],
)
def test_bad_spec_files_exit_2_with_one_line(tmp_path, capsys, text, match):
    (tmp_path / "bad.toml").write_text(text)
    assert cli(tmp_path / "bad.toml", "--out", tmp_path / "res") == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_jobs_train_runs_in_parallel_processes_with_the_same_results(tmp_path, tiny_dir, capsys, monkeypatch):
    exp = experiment(tmp_path, tiny_dir)
    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)  # 2 jobs on 2 cores: 1 thread each
    threads = run.torch.get_num_threads()
    run.torch.set_num_threads(1)  # as each of the 2 processes on 2 cores: CPU float sums depend on the thread count
    try:
        assert cli(exp, "--out", tmp_path / "seq", "--no-figures", "--deterministic") == 0
    finally:
        run.torch.set_num_threads(threads)
    assert cli(exp, "--out", tmp_path / "par", "--no-figures", "--deterministic", "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert out.count(" done") >= 2
    for r in ("plain8", "resnet8"):
        seq = (tmp_path / "seq" / "pair" / r / "metrics.csv").read_text().splitlines()
        par = (tmp_path / "par" / "pair" / r / "metrics.csv").read_text().splitlines()
        strip = lambda lines: [",".join(line.split(",")[:12]) for line in lines]  # noqa: E731  (timing columns differ)
        assert strip(par) == strip(seq)
        assert (tmp_path / "par" / "pair" / r / "output.log").exists()


def test_results_elsewhere_get_their_figures_beside_them_never_in_the_committed_figures():
    figures = lambda *argv: run.figures_dir(run.parse_args(["degradation", *argv]))  # noqa: E731
    assert figures() == figures("--out", "results") == run.Path("figures")
    assert figures("--out", "/tmp/x") == run.Path("/tmp/x/figures")
    assert figures("--out", "/tmp/x", "--figures", "figs") == run.Path("figs")


def test_two_runs_at_once_by_default_on_a_cpu_of_two_cores_else_one(monkeypatch):
    cpu, gpu = [run.torch.device("cpu")], [run.torch.device("cuda")]
    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    assert run.default_jobs(cpu, 4, 1) == 2
    assert (
        run.default_jobs(cpu, 1, 1) == run.default_jobs(gpu, 4, 1) == run.default_jobs(cpu, 4, 2) == 1
    )  # one run, GPU, torchrun
    monkeypatch.setattr(run.os, "cpu_count", lambda: 1)
    assert run.default_jobs(cpu, 4, 1) == 1


def test_a_child_run_gets_the_same_options_but_its_own_run_and_device():
    args = run.parse_args(
        [
            "degradation",
            "--quick",
            "--seed",
            "3",
            "--set",
            "lr=0.05",
            "--set",
            "ramp=0",
            "--jobs",
            "2",
            "--out",
            "elsewhere",
            "--figures",
            "figs",
            "--resume",
            "--workers",
            "1",
        ]
    )
    cmd = run.child_command(args, "plain20", "cpu")
    assert cmd[3:11] == [
        "degradation",
        "--runs",
        "plain20",
        "--device",
        "cpu",
        "--no-figures",
        "--no-progress",
        "--quick",
    ]
    options = cmd[11:]
    assert ["--seed", "3"] == options[options.index("--seed") :][:2] and options.count("--set") == 2
    assert (
        "lr=0.05" in options
        and "ramp=0" in options
        and "--resume" in options
        and ["--out", "elsewhere"] == options[options.index("--out") :][:2]
    )
    assert (
        "--jobs" not in options and "--figures" not in options and "--data-dir" not in options
    )  # parent-only, or the default
    assert run.parse_args(cmd[3:]).seed == 3  # and the child parses it
