"""Run directories: atomic files, the per-epoch CSV, and a lock so two processes never share a run.

results/<experiment>/<run>/
    config.json      the resolved spec plus where and on what it ran
    metrics.csv      one row per epoch (CSV_COLUMNS), flushed and fsynced as it is written
    status.json      {"state": running | done | failed | interrupted, "message": ...}
    checkpoint.pt    the latest training state, written atomically (not committed to git)
    final.pt         {"model": state_dict, "config": config} once the run is done
"""

import csv
import errno
import fcntl
import io
import json
import os
from pathlib import Path

import torch

CSV_COLUMNS = (
    "experiment", "run", "model", "depth", "residual", "epoch", "iteration", "lr",
    "train_loss", "train_err", "test_loss", "test_err", "epoch_seconds", "images_per_second",
)  # fmt: skip


class RunDirError(Exception):
    """The run directory cannot be used as asked (exists, locked, different config)."""


class DiskFull(Exception):
    pass


def write_atomic(path, write):
    """Write via `write(file)` to a temporary file, fsync, then rename over `path`: a crash or a full
    disk leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"disk full while writing {path}; the previous {path.name} is intact. Free space and --resume.") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(obj, path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, lambda f: f.write(buf.getbuffer()))


def write_json(obj, path):
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_status(run_dir, state, message=""):
    write_json({"state": state, "message": message}, Path(run_dir) / "status.json")


def read_status(run_dir):
    path = Path(run_dir) / "status.json"
    return read_json(path) if path.exists() else {"state": "unknown", "message": ""}


def append_row(path, row):
    """Append one CSV row (a dict over CSV_COLUMNS), writing the header first for a new file."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    if new:
        writer.writeheader()
    writer.writerow(row)
    try:
        with open(path, "a") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"disk full while writing {path}. Free space and --resume.") from None
        raise


def truncate_rows(path, rows):
    """Keep the header and the first `rows` rows: rows written after the checkpoint are redone."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > rows + 1:
        write_atomic(path, lambda f: f.write("".join(lines[: rows + 1]).encode()))


class RunLock:
    """An exclusive lock on a run directory, held for the life of the process's use of it."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "lock"
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise RunDirError(f"{self.path.parent} is in use by another process (lock held on {self.path}); wait for it or use another --out.") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
