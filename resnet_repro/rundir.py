"""The run directory: its files, the metrics.csv schema with its one writer and one reader, the lock,
the status, and a run's result. The engine, `run` and the analysis all go through here.

results/<experiment>/<run>/
    config.json      the resolved spec plus where and on what it ran
    metrics.csv      one row per epoch or log interval (COLUMNS), flushed and fsynced as it is written
    status.json      {"state": running | done | failed | interrupted, "message": ...}; a "running" run whose
                     process is gone (no lock held) reads as "stopped"
    checkpoint.pt    the latest training state, written atomically (not committed to git)
    final.pt         {"model": state_dict, "config": config} once the run is done
    evaluation.json  the 10-crop test at the end of a run with ten_crop
    measures.json    Fig. 7's layer responses and `analysis evaluate`'s scores of final.pt, keyed by the md5 of
                     final.pt and of the test data (resnet_repro.inspection.cached), so that a redraw reads them
"""

import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet_repro.files import DiskFull, save, write_atomic  # noqa: F401  (save: the run directory's .pt files)

# metrics.csv: its columns, in order, and their types
COLUMNS = {
    "experiment": str, "run": str, "model": str, "depth": int, "residual": bool, "epoch": float,
    "iteration": int, "lr": float, "train_loss": float, "train_err": float, "test_loss": float,
    "test_err": float, "epoch_seconds": float, "images_per_second": float,
}  # fmt: skip
# config.json keys that may differ on --resume (where and when it runs, not what it computes)
ENVIRONMENT_KEYS = ("device", "torch", "commit", "python", "data_dir", "started", "world_size", "threads")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, locked, different config, a damaged file)."""


@dataclass
class RunResult:
    experiment: str
    run: str
    state: str  # done | failed | interrupted | stopped | skipped
    params: int
    iterations: int = 0
    final_train_err: float = math.nan
    final_test_err: float = math.nan
    best_test_err: float = math.nan
    minutes: float = 0.0
    images_per_second: float = math.nan  # training throughput, the median of the rows'
    message: str = ""
    stop_signal: str = ""  # a SIGINT/SIGTERM that came while the run was finishing: start no further run


# --- files ---------------------------------------------------------------------------------------


def read_text(path):
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RunDirError(f"{path}: not UTF-8 text (byte {e.start}); damaged or not written by this suite") from None


def write_json(obj, path):
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path):
    """A run-directory JSON file as a dict; RunDirError naming the file if it is damaged."""
    try:
        obj = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise RunDirError(
            f"{path}, line {e.lineno}: not valid JSON ({e.msg}); damaged: --overwrite starts the run "
            f"again (or restore the file)"
        ) from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(obj, dict):
        raise RunDirError(
            f"{path}: damaged (a JSON {type(obj).__name__}, not an object); --overwrite starts the run again "
            f"(or restore the file)"
        )
    return obj


def load_checkpoint(path):
    """checkpoint.pt as written by the engine; RunDirError naming the file if it is damaged (e.g. cut off)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a cut-off or foreign file fails inside the unpickler in many ways
        raise RunDirError(
            f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"--overwrite starts the run again"
        ) from None


# --- status and lock -----------------------------------------------------------------------------


def write_status(run_dir, state, message=""):
    write_json({"state": state, "message": message}, Path(run_dir) / "status.json")


def read_status(run_dir, absent="unknown"):
    """status.json as it stands: a "running" run whose process is gone reads "stopped"; `absent` without one."""
    path = Path(run_dir) / "status.json"
    status = read_json(path) if path.exists() else {"state": absent, "message": ""}
    if status.get("state") == "running" and not locked(Path(run_dir) / "lock"):
        return {
            "state": "stopped",
            "message": "its process ended without a word (killed, or the machine stopped); --resume continues it",
        }
    return {"state": status.get("state", "unknown"), "message": status.get("message", "")}


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
            raise RunDirError(
                f"{self.path.parent} is in use by another process (lock held on {self.path}); wait for it or use another --out."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# --- creating and checking -----------------------------------------------------------------------


def prepare(run_dir, config, resume, overwrite, defaults):
    """Create the run directory, or check an existing one against `config` (a key missing from the old
    config.json counts as its value in `defaults`, a key added since the run started). Returns the checkpoint
    to resume from (or None). Never overwrites results unless asked."""
    run_dir = Path(run_dir)
    exists = (run_dir / "config.json").exists()
    if exists and overwrite:
        for p in run_dir.iterdir():
            if p.name != "lock":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        exists = False
    if exists and not resume:
        raise RunDirError(
            f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to start it again."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not exists:
        write_json(config, run_dir / "config.json")
        return None
    old = read_json(run_dir / "config.json")
    diffs = [f"{k}: {_json(old.get(k))!r} -> {_json(v)!r}" for k, v in config.items() if k not in ENVIRONMENT_KEYS
             and _json(old.get(k, defaults.get(k))) != _json(v)]  # fmt: skip
    if diffs:
        raise RunDirError(
            f"{run_dir} holds a run with a different config ({'; '.join(diffs)}); pass --overwrite to start it again, or --out elsewhere."
        )
    path = run_dir / "checkpoint.pt"
    return load_checkpoint(path) if path.exists() else None


def _json(v):
    return list(v) if isinstance(v, tuple) else v


def unfinished(exp_dir, runs):
    """The runs of `runs` that exist under exp_dir and are not done."""
    return [
        run
        for run in runs
        if (Path(exp_dir) / run / "config.json").exists() and read_status(Path(exp_dir) / run)["state"] != "done"
    ]


# --- metrics.csv ---------------------------------------------------------------------------------


def append_row(path, row):
    """Append one CSV row (a dict over COLUMNS), writing the header first for a new file."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
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


def read_metrics(path):
    """metrics.csv -> list of typed rows ({column: value}, COLUMNS only). Raises RunDirError naming the
    file and line for missing columns, a short or unparsable line, a cut-off last line, or epochs out
    of order. Extra columns are ignored. A missing, empty or header-only file gives []."""
    if not Path(path).exists():
        return []
    text = read_text(path)
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return []
    header = lines[0]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise RunDirError(f"{path}, line 1: missing columns {', '.join(missing)} (header: {','.join(header)})")
    if not text.endswith("\n"):
        raise RunDirError(
            f"{path}, line {len(lines)}: cut off (no newline at its end); truncated or still being written"
        )
    index = {c: header.index(c) for c in COLUMNS}
    rows, last_epoch = [], None
    for lineno, fields in enumerate(lines[1:], start=2):
        if len(fields) != len(header):
            raise RunDirError(
                f"{path}, line {lineno}: {len(fields)} fields, expected {len(header)} (truncated or malformed)"
            )
        row = {c: _parse(fields[index[c]], t, f"{path}, line {lineno}, column {c}") for c, t in COLUMNS.items()}
        if last_epoch is not None and row["epoch"] <= last_epoch:
            raise RunDirError(
                f"{path}, line {lineno}: epoch {row['epoch']:g} after epoch {last_epoch:g} (expected rows in order)"
            )
        last_epoch = row["epoch"]
        rows.append(row)
    runs = {r["run"] for r in rows}
    if len(runs) > 1:
        raise RunDirError(f"{path}: rows of several runs ({', '.join(sorted(runs))})")
    return rows


def _parse(value, kind, where):
    try:
        if kind is bool:
            return {"true": True, "false": False}[value.strip().lower()]
        return kind(value)
    except (KeyError, ValueError):
        expected = {bool: "True or False", int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise RunDirError(f"{where}: {value!r} is not {expected}") from None


def last_iteration(run_dir):
    """The iteration of the last complete row (0 without one, or while a row is being written)."""
    try:
        rows = read_metrics(Path(run_dir) / "metrics.csv")
    except RunDirError:
        return 0
    return rows[-1]["iteration"] if rows else 0


# --- results -------------------------------------------------------------------------------------


def outcome(rows):
    """A run's numbers from its metrics rows: the last row's iteration, training and test error, the best test error,
    the minutes (sum of the rows' times) and the training images/s (the median of the rows': a row slowed by
    other work on the machine moves it little)."""
    if not rows:
        return {
            "final_train_err": math.nan,
            "final_test_err": math.nan,
            "best_test_err": math.nan,
            "minutes": 0.0,
            "images_per_second": math.nan,
            "iterations": 0,
        }
    return {
        "iterations": rows[-1]["iteration"], "final_train_err": rows[-1]["train_err"], "final_test_err": rows[-1]["test_err"],
        "best_test_err": min(r["test_err"] for r in rows), "minutes": sum(r["epoch_seconds"] for r in rows) / 60,
        "images_per_second": statistics.median(r["images_per_second"] for r in rows),
    }  # fmt: skip


def result(run_dir, state=None, message=None):
    """A run's RunResult from its directory: config.json, status.json (unless `state` is given), metrics.csv."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    status = read_status(run_dir)
    return RunResult(
        config["experiment"],
        config["run"],
        state or status["state"],
        config["params"],
        message=status["message"] if message is None else message,
        **outcome(read_metrics(run_dir / "metrics.csv")),
    )
