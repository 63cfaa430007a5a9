"""Run directories: atomic files, the per-epoch CSV, and a lock so two processes never share a run.

results/<experiment>/<run>/
    config.json      the resolved spec plus where and on what it ran
    metrics.csv      one row per epoch (CSV_COLUMNS), flushed and fsynced as it is written
    status.json      {"state": running | done | failed | interrupted, "message": ...}; a "running" run whose
                     process is gone (no lock held) reads as "stopped"
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
    existed = path.exists()
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if existed else f"no {path.name} was written"
            raise DiskFull(f"disk full while writing {path}; {kept}. Free space and --resume.") from None
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
    """A run-directory JSON file as a dict; RunDirError naming the file if it is damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunDirError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          f"--overwrite starts the run again (or restore the file)") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path} is damaged (not a JSON object); --overwrite starts the run again (or restore the file)")
    return obj


def load_checkpoint(path):
    """checkpoint.pt as written by the engine; RunDirError naming the file if it is damaged (e.g. cut off)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a cut-off or foreign file fails inside the unpickler in many ways
        raise RunDirError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          f"--overwrite starts the run again") from None


def write_status(run_dir, state, message=""):
    write_json({"state": state, "message": message}, Path(run_dir) / "status.json")


def read_status(run_dir):
    path = Path(run_dir) / "status.json"
    status = read_json(path) if path.exists() else {"state": "unknown", "message": ""}
    if live_state(run_dir, status.get("state")) == "stopped":
        return {"state": "stopped", "message": "its process ended without a word (killed, or the machine stopped); --resume continues it"}
    return status


def live_state(run_dir, state):
    """A state read from status.json as it stands: "running" whose process is gone (no lock held) is "stopped"."""
    return "stopped" if state == "running" and not locked(Path(run_dir) / "lock") else state


def locked(path):
    """Whether a process holds the run's lock (see RunLock)."""
    try:
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


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
