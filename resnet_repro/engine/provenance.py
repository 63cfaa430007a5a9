"""What config.json records besides the spec: the model's facts, the data, and where, on what and from
which commit a run ran (resnet_repro.engine.rundir.ENVIRONMENT_KEYS may change on --resume, the rest may not)."""

import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from resnet_repro.engine.devices import device_name
from resnet_repro.engine.distributed import world
from resnet_repro.models import parse_name, resolve

CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout this package runs from, if any


def git_commit(root=CHECKOUT):
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10)  # noqa: E731
        # only a checkout of this project: an installed package (in a venv) may sit inside some other repository
        top = run("rev-parse", "--show-toplevel").stdout.strip()
        if not top or Path(top).resolve() != root:
            return "unknown"
        commit = run("rev-parse", "--short", "HEAD").stdout.strip()
        # runs write into the committed results/ and figures/: those are data, the code is what "dirty" is about
        data = (":(exclude)results", ":(exclude)figures")
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", ".", *data).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_config(job, dataset):
    """What config.json records: the resolved spec, the model's facts, the data and the environment; all but
    `params`, which the engine adds once it builds the model (a run done already is checked without it: it
    follows from the keys that are there)."""
    spec = job.spec
    kind, depth = parse_name(spec.model)
    shortcut, stem = resolve(spec.model, spec.shortcut, spec.stem)
    return {
        "experiment": job.experiment,
        "run": job.run,
        **asdict(spec),
        "shortcut": shortcut,
        "stem": stem,
        "depth": depth,
        "residual": kind == "resnet",
        "num_classes": dataset.num_classes,
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "train_images": len(dataset.train),
        "test_images": len(dataset.test),
        "quick": job.quick,
        "device": device_name(job.device),
        "torch": str(torch.__version__),
        "commit": git_commit(),
        "python": sys.version.split()[0],
        "world_size": world()[1],  # processes under torchrun, each training a shard of every batch
        "threads": torch.get_num_threads(),  # CPU threads of this process (run --jobs sets them)
        "data_dir": str(job.data_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
