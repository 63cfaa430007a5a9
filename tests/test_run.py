import json
from pathlib import Path

import pytest
import torch

from conftest import write_image_folder
from resnet_repro import data, run
from resnet_repro.analysis import tables
from resnet_repro.launch import plan


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


@pytest.mark.slow
def test_with_jobs_each_run_checks_itself_and_done_ones_first(tmp_path, tiny_dir, capsys, monkeypatch):
    """The parent of children loads no data: each child loads its own and decides whether its run is done; those
    whose status says done are checked before any other starts, so a changed config trains nothing."""
    path = tmp_path / "three.toml"
    path.write_text(Path(experiment(tmp_path, tiny_dir)).read_text().replace('"resnet8"]', '"resnet8", "resnet14"]'))
    out_dir, exp_dir = tmp_path / "res", tmp_path / "res" / "three"
    assert cli(path, "--out", out_dir, "--no-figures", "--runs", "plain8,resnet8") == 0
    capsys.readouterr()

    def no_data(*args, **kwargs):
        raise AssertionError("the parent of children loaded data")

    monkeypatch.setattr(data, "load_for", no_data)  # in this process only: the children load theirs
    assert cli(path, "--out", out_dir, "--no-figures", "--jobs", "2", "--iterations", "3") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {exp_dir / 'plain8'} holds a run with a different config (iterations: 4 -> 3")
    assert not (exp_dir / "resnet14" / "config.json").exists()  # not started: the done runs were checked first
    monkeypatch.undo()
    assert cli(path, "--out", out_dir, "--no-figures", "--runs", "plain8", "--iterations", "3") == 2
    assert capsys.readouterr().err == err  # the same line as in this process
    monkeypatch.setattr(data, "load_for", no_data)
    assert cli(path, "--out", out_dir, "--no-figures", "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert out.count("| skipped |") == 2 and "| resnet14 |" in out and out.count("| done |") == 1
    assert "data: " in (exp_dir / "resnet8" / "output.log").read_text()  # what each child loaded


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
    config = json.loads((tmp_path / "res" / "pair" / "resnet8-seed7" / "config.json").read_text())  # seed 7's dir
    assert (config["seed"], config["iterations"], config["lr"], config["milestones"]) == (7, 2, 0.05, [1, 2])
    assert config["run"] == "resnet8"
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 processes on 2 cores: CPU float sums depend on the thread count
    try:
        assert cli(exp, "--out", tmp_path / "seq", "--no-figures", "--deterministic") == 0
    finally:
        torch.set_num_threads(threads)
    assert cli(exp, "--out", tmp_path / "par", "--no-figures", "--deterministic", "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert out.count(" done") >= 2
    for r in ("plain8", "resnet8"):
        seq = (tmp_path / "seq" / "pair" / r / "metrics.csv").read_text().splitlines()
        par = (tmp_path / "par" / "pair" / r / "metrics.csv").read_text().splitlines()
        strip = lambda lines: [",".join(line.split(",")[:12]) for line in lines]  # noqa: E731  (timing columns differ)
        assert strip(par) == strip(seq)
        assert (tmp_path / "par" / "pair" / r / "output.log").exists()
        config = json.loads((tmp_path / "par" / "pair" / r / "config.json").read_text())
        assert "threads_changed" not in config  # --deterministic keeps each run's threads


def test_results_elsewhere_get_their_figures_beside_them_never_in_the_committed_figures():
    figures = lambda *argv: run.figures_dir(run.parse_args(["degradation", *argv]))  # noqa: E731
    assert figures() == figures("--out", "results") == Path("figures")
    assert figures("--out", "/tmp/x") == Path("/tmp/x/figures")
    assert figures("--out", "/tmp/x", "--figures", "figs") == Path("figs")


def test_two_runs_at_once_by_default_on_a_cpu_of_two_cores_else_one(monkeypatch):
    cpu, gpu = [torch.device("cpu")], [torch.device("cuda")]
    monkeypatch.setattr(plan.os, "cpu_count", lambda: 2)
    assert plan.default_jobs(cpu, 4, 1) == 2
    assert plan.default_jobs(cpu, 1, 1) == plan.default_jobs(gpu, 4, 1) == plan.default_jobs(cpu, 4, 2) == 1
    monkeypatch.setattr(plan.os, "cpu_count", lambda: 1)
    assert plan.default_jobs(cpu, 4, 1) == 1


def test_a_child_process_receives_its_run_as_data_with_the_parents_options(monkeypatch):
    argv = "degradation --quick --seed 3 --set lr=0.05 --set ramp=0 --out elsewhere --resume --workers 1".split()
    args = run.parse_args(argv)
    exp = run.experiment_from(args)
    gpus = [torch.device("cuda:0"), torch.device("cuda:1")]
    jobs = plan.plan_jobs(exp, args.out, gpus, run.job_options(args, gpus, 2, parallel=True))
    assert [j.run for j in jobs] == ["plain20", "plain56", "resnet20", "resnet56"]
    assert jobs[1].device != jobs[3].device  # spread longest first: the two 56-layer nets on different GPUs
    monkeypatch.setattr(run.os, "cpu_count", lambda: 4)
    cpu = [torch.device("cpu")]
    job = plan.plan_jobs(exp, args.out, cpu, run.job_options(args, cpu, 2, parallel=True))[0]
    assert (job.spec.seed, job.spec.lr, job.spec.ramp, job.spec.data) == (3, 0.05, 0, "mini")
    assert (job.resume, job.workers, job.threads, job.progress, job.quick) == (True, 1, 2, False, True)
    assert job.run_dir == str(Path("elsewhere") / "degradation-quick" / "plain20-seed3")
    assert plan.Job.from_json(job.to_json()) == job  # what the child reads is what the parent planned


def test_the_model_is_built_once_per_run_and_not_at_all_for_a_run_done_already(tmp_path, tiny_dir, monkeypatch):
    from resnet_repro import models

    builds, real = [], models.ResNet.__init__

    def counting(self, *a, **k):
        builds.append(a)
        real(self, *a, **k)

    monkeypatch.setattr(models.ResNet, "__init__", counting)
    exp = experiment(tmp_path, tiny_dir)
    assert cli(exp, "--out", tmp_path / "res", "--no-figures") == 0
    assert len(builds) == 2  # plain8 and resnet8: config.json counts the parameters of the model the engine trains
    assert cli(exp, "--out", tmp_path / "res", "--no-figures") == 0
    assert len(builds) == 2  # both skipped


def test_the_claims_the_runs_allow_follow_the_summary(tmp_path, tiny_dir, capsys):
    assert cli(experiment(tmp_path, tiny_dir), "--out", tmp_path / "res", "--no-figures") == 0
    assert "The paper's claims" not in capsys.readouterr().out  # plain8/resnet8: no claim of the paper is about them
    path = tmp_path / "twenty.toml"
    path.write_text(f"""
runs = ["plain20", "resnet20"]
[train]
data = "{tiny_dir}"
batch_size = 16
iterations = 2
milestones = [1]
eval_batch_size = 8
""")
    assert cli(path, "--out", tmp_path / "res", "--no-figures") == 0
    out = capsys.readouterr().out
    claims = out[out.index("The paper's claims on these runs") :]
    assert "ResNet-20 below plain-20 in final training and test error" in claims and "not run" not in claims
