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


@pytest.mark.slow  # subprocesses
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no threads to hand on")
def test_a_run_left_alone_takes_the_threads_of_the_one_that_ended(tmp_path):
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
    cmd += ["--no-progress", "--no-figures", "--device", "cpu", "--jobs", "2"]
    parent = subprocess.Popen(
        cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    config = tmp_path / "res" / "exp" / "resnet8" / "config.json"
    deadline, changed = time.time() + 240, []
    try:
        while time.time() < deadline and not changed and parent.poll() is None:
            time.sleep(0.1)
            with_change = config.exists() and "threads_changed" in config.read_text()
            changed = json.loads(config.read_text())["threads_changed"] if with_change else []
    finally:
        parent.send_signal(signal.SIGINT)
        out, err = parent.communicate(timeout=120)
    each = (os.cpu_count() or 1) // 2
    assert json.loads(config.read_text())["threads"] == each, err[-2000:]
    assert [c["threads"] for c in changed] == [2 * each], err[-2000:]  # both runs' threads
    log = (config.parent / "output.log").read_text()
    assert f"resnet8: {2 * each} CPU threads from iteration {changed[0]['iteration']} on (a run beside it ended)" in log
    assert parent.returncode == 130 and "plain8: done" in out + err
