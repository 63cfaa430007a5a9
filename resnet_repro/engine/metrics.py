"""metrics.csv: its columns (an API, like state-dict keys), its one writer and its one reader. One row per
epoch, or per `log_every` iterations, flushed and fsynced as it is written."""

import csv
import io
import math
import warnings
from pathlib import Path

from resnet_repro.engine.rundir import RunDirError, RunFailed, read_text
from resnet_repro.files import DiskFull, HeaderMismatch, append_csv, write_atomic

# metrics.csv: its columns, in order, and their types
COLUMNS = {
    "experiment": str,
    "run": str,
    "model": str,
    "depth": int,
    "residual": bool,
    "epoch": float,
    "iteration": int,
    "lr": float,
    "train_loss": float,
    "train_err": float,
    "test_loss": float,
    "test_err": float,
    "epoch_seconds": float,
    "images_per_second": float,
}


def append_row(path, row):
    """Append one CSV row (a dict over COLUMNS), writing the header first for a new file (files.append_csv)."""
    try:
        append_csv(path, COLUMNS, [row], lineterminator="\n")
    except DiskFull:
        raise DiskFull(f"disk full while writing {path}. Free space and --resume.") from None
    except HeaderMismatch as e:
        raise RunFailed(f"{e}; written by another version of this suite? --overwrite starts the run again") from None


def truncate_rows(path, rows):
    """Keep the header and the first `rows` rows: rows written after the checkpoint are redone."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > rows + 1:
        write_atomic(path, lambda f: f.write("".join(lines[: rows + 1]).encode()))


def read_metrics(path, cut_off_ok=False):
    """metrics.csv -> list of typed rows ({column: value}, COLUMNS only). Raises RunDirError naming the
    file and line for missing columns, a short or unparsable line, a cut-off last line (with cut_off_ok: the
    rows before it, and a warning: a run killed mid-row and not yet resumed), or epochs out of order. Extra
    columns are ignored. A missing, empty or header-only file gives []."""
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
        where = f"{path}, line {len(lines)}: cut off (no newline at its end)"
        if not cut_off_ok:
            raise RunDirError(f"{where}; truncated or still being written")
        warnings.warn(f"{where}; read the {len(lines) - 2} rows before it (--resume rewrites it)", stacklevel=2)
        lines = lines[:-1]
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
    bad = [lineno for lineno, r in enumerate(rows, start=2) if not all(math.isfinite(r[c]) for c in ERRORS)]
    if bad:  # a diverged run writes none (it fails first); a hand-edited or foreign file may
        warnings.warn(
            f"{path}: a loss or error that is not a finite number at line(s) {', '.join(map(str, bad))} "
            f"(edited by hand, or not written by this suite?)",
            stacklevel=2,
        )
    return rows


ERRORS = ("train_loss", "train_err", "test_loss", "test_err")  # what a row measures


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
