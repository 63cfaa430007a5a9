"""Children of `run --jobs`: the bar over them, and once no run is left to start, those still training take the
CPU threads of one that ended."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, job, write_image_folder, write_run
from resnet_repro.config import TrainSpec
from resnet_repro.launch import local


def test_the_bar_over_the_runs_starts_where_they_stand(tmp_path, capsys):
    """A resumed campaign's bar counts only the steps trained from here on: its rate and time left are those of
    the steps since the resume, not thousands of iterations in its first second. It names where each run training stands."""
    write_run(tmp_path, "plain20", epochs=4)  # rows up to iteration 4 x 391
    write_run(tmp_path, "plain56", epochs=2)
    spec = TrainSpec(model="plain20", iterations=64000)
    jobs = [job(spec, tmp_path / "degradation" / run) for run in ("plain20", "plain56", "resnet20")]
    with local.progress_bar(jobs, at_once=2) as bar:
        assert (bar.initial, bar.n, bar.total) == (6 * 391, 6 * 391, 3 * 64000)
        bar.mininterval, _ = 0, capsys.readouterr()
        for _ in range(3):  # no new row: drawn once, naming the runs, not at every look at their CSVs
            local.show_progress(bar, jobs, running={"plain20": None, "plain56": None})
        assert capsys.readouterr().err.count("\r") == 1 and bar.postfix == "plain20 1,564, plain56 782"
        write_run(tmp_path, "resnet20", epochs=1)  # one more row: it started
        local.show_progress(bar, jobs, running={"plain56": None, "resnet20": None})
        assert bar.n == 7 * 391 and bar.postfix == "plain56 782, resnet20 391"
    again = [job(spec, tmp_path / "degradation" / "plain20", overwrite=True), *jobs[1:]]
    with local.progress_bar(again, at_once=2) as bar:
        assert bar.initial == (2 + 1) * 391  # plain20, trained again, from its first step


def two_runs(tmp_path):
    """An experiment of a 4-step plain8 and a resnet8 that trains until stopped, and its command with --jobs 2."""
    write_image_folder(tmp_path / "tiny", n_train=32, n_test=8)
    (tmp_path / "exp.toml").write_text(f"""
runs = ["plain8", "resnet8"]
[train]
data = "{tmp_path / "tiny"}"
batch_size = 16
iterations = 100000
milestones = []
eval_batch_size = 8
[run.plain8]
iterations = 4
""")
    cmd = [sys.executable, "-m", "resnet_repro.run", str(tmp_path / "exp.toml"), "--out", str(tmp_path / "res")]
    return cmd + ["--no-progress", "--no-figures", "--device", "cpu", "--jobs", "2"]


def threads_changed(run_dir):
    return "threads_changed" in (run_dir / "config.json").read_text()


def trained_a_row(run_dir):
    return (run_dir / "metrics.csv").exists() and len((run_dir / "metrics.csv").read_text().splitlines()) > 1


def threads_of_resnet8(tmp_path, cmd, until=threads_changed):
    """Run `cmd` until `until`(resnet8's run directory) once it has a config.json (or 240 s), then SIGINT it:
    (resnet8's config.json, its output.log, the command's output, its exit code)."""
    parent = subprocess.Popen(
        cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    config = tmp_path / "res" / "exp" / "resnet8" / "config.json"
    deadline, seen = time.time() + 240, False
    try:
        while time.time() < deadline and not seen and parent.poll() is None:
            time.sleep(0.1)
            seen = config.exists() and until(config.parent)
    finally:
        parent.send_signal(signal.SIGINT)
        out, err = parent.communicate(timeout=120)
    return json.loads(config.read_text()), (config.parent / "output.log").read_text(), out + err, parent.returncode


@pytest.mark.slow  # subprocesses
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no threads to hand on")
def test_a_run_left_alone_takes_the_threads_of_the_one_that_ended(tmp_path):
    config, log, out, code = threads_of_resnet8(tmp_path, two_runs(tmp_path))
    each = (os.cpu_count() or 1) // 2
    assert config["threads"] == each, out[-2000:]
    changed = config.get("threads_changed", [])
    assert [c["threads"] for c in changed] == [2 * each], out[-2000:]  # both runs' threads
    assert f"resnet8: {2 * each} CPU threads from iteration {changed[0]['iteration']} on (a run beside it ended)" in log
    assert code == 130 and "plain8: done" in out


@pytest.mark.slow  # subprocesses
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no threads to hand on")
def test_a_run_started_beside_one_done_already_takes_its_threads_from_the_start(tmp_path):
    """A campaign resumed after one of its two runs finished: the one left trains on both runs' threads from its
    first step, and a resumption on them again is the same as an unbroken run (no note of other threads)."""
    cmd = two_runs(tmp_path)
    done = subprocess.run([*cmd, "--runs", "plain8"], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    config, log, out, code = threads_of_resnet8(tmp_path, [*cmd, "--resume"], until=trained_a_row)
    each = (os.cpu_count() or 1) // 2
    assert config["threads"] == 2 * each and "threads_changed" not in config, out[-2000:]
    assert code == 130 and "plain8: skipped" in out
    resumed = lambda run_dir: "resumed" in (run_dir / "config.json").read_text()
    config, log, out, code = threads_of_resnet8(tmp_path, [*cmd, "--resume"], until=resumed)
    assert [r["threads"] for r in config["resumed"]] == [2 * each] and "threads_changed" not in config, out[-2000:]
    assert "CPU thread(s) where it ran with" not in log and code == 130
