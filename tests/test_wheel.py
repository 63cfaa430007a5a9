"""The wheel: it ships the package, the experiments and the mini CIFAR-10 (not tests/ or tools/), and installed
(here: unzipped onto PYTHONPATH) it runs from any folder, reading its own experiments and writing into that folder."""

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # builds a wheel, then trains in a subprocess


def check(proc):
    assert proc.returncode == 0, f"{proc.args} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def git(*args, cwd):
    return check(subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)).strip()


def test_the_wheel_ships_the_experiments_and_runs_from_any_folder(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH: it builds the wheel here (CI installs it)")
    dist = tmp_path / "dist"
    check(
        subprocess.run(
            [uv, "build", "--wheel", "--out-dir", str(dist)], cwd=ROOT, capture_output=True, text=True, timeout=600
        )
    )
    (wheel,) = dist.glob("*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    experiments = sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))
    shipped = {f"resnet_repro/experiments/{name}.toml" for name in experiments}
    assert experiments and shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
    assert "resnet_repro/assets/cifar10-mini.tar.gz" in names
    assert "resnet_repro/run.py" in names
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"tests", "tools", "experiments"}, sorted(tops)
    assert {t for t in tops if not t.endswith(".dist-info")} == {"resnet_repro"}, sorted(tops)

    # installed into a venv that lives inside some other git repository: its commit is not this package's
    outer = tmp_path / "other-repo"
    site = outer / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    git("init", "-q", cwd=outer)
    identity = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    git(*identity, "commit", "-q", "--allow-empty", "-m", "unrelated", cwd=outer)
    assert git("rev-parse", "--short", "HEAD", cwd=site)  # what a naive lookup from the package would record

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's copy ahead of the editable install
    python = lambda *a: subprocess.run(
        [sys.executable, *a], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
    )

    where = check(
        python(
            "-c",
            "import resnet_repro, resnet_repro.config as c; print(resnet_repro.__file__); print(c.EXPERIMENTS_DIR)",
        )
    )
    package, experiments_dir = map(Path, where.splitlines())
    assert package.resolve().is_relative_to(site.resolve()), package
    assert experiments_dir == site.resolve() / "resnet_repro" / "experiments"

    listed = check(python("-m", "resnet_repro.run", "--list"))
    assert sorted(line.split()[0] for line in listed.splitlines() if line[:1].strip()) == experiments, listed

    quick = (
        "degradation --quick --runs plain20 --iterations 8 --set log_every=4 --device cpu --no-progress --no-figures"
    )
    check(python("-m", "resnet_repro.run", *quick.split()))
    run_dir = elsewhere / "results" / "degradation-quick" / "plain20"
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["experiment"], r["run"], int(r["iteration"])) for r in rows] == [
        ("degradation-quick", "plain20", 4),
        ("degradation-quick", "plain20", 8),
    ], rows
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["data"], config["iterations"], config["log_every"]) == ("mini", 8, 4)
    assert config["commit"] == "unknown", config["commit"]
