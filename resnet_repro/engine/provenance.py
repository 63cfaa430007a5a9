"""What config.json records besides the spec: the model's facts, the data, and where, on what and from
which commit a run ran (resnet_repro.engine.rundir.ENVIRONMENT_KEYS may change on --resume, the rest may not)."""

import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from resnet_repro.engine.distributed import world
from resnet_repro.models import num_params, parse_name, resolve


def git_commit():
    root = Path(__file__).resolve().parents[2]  # the checkout this package runs from, if any
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10)  # noqa: E731
        commit = run("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return (commit + ("+dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device):
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def run_config(job, dataset, model=None):
    """What config.json records: the resolved spec, the model's facts, the data and the environment. `model`:
    the run's model, whose parameters it counts (without it, as when a parent checks a finished run's config,
    `params` is left out; it follows from the keys that are there)."""
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
        **({"params": num_params(model)} if model is not None else {}),
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
