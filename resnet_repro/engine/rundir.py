"""The run directory: its files, the metrics.csv schema with its one writer and one reader, the lock,
the status, the run's own files (what --overwrite deletes, or sets aside until a Slurm job takes the run), and
`claim`, which holds a run directory while a process trains into it. The engine, `run`, the launchers and the
analysis all go through here.

results/<experiment>/<run>/
    config.json      the resolved spec plus where and on what it ran
    metrics.csv      one row per epoch or log interval (COLUMNS), flushed and fsynced as it is written
    status.json      {"state": running | done | failed | interrupted, "message": ...}; a "running" run whose
                     process is gone (no lock held) reads as "stopped"
    checkpoint.pt    the latest training state, written atomically (committed only for campaign runs)
    final.pt         {"model": state_dict, "config": config, "mean": per-pixel training mean} once done
    evaluation.json  the 10-crop test at the end of a run with ten_crop
    output.log       what the run printed, when a parent process (--jobs) started it
    measures.json    Fig. 7's layer responses and `analysis evaluate`'s scores of final.pt, keyed by the md5 of
                     final.pt and of the test data (resnet_repro.analysis.inspection.cached), so that a redraw
                     reads them
"""

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

from resnet_repro.config import SPEC_DEFAULTS
from resnet_repro.engine.distributed import from_rank0, world
from resnet_repro.files import DiskFull, NotLoadable, load_tensors, write_atomic

# config.json keys that may differ on --resume (where and when it runs, not what it computes); the data is
# compared by what it is (dataset_checksum), not by the path that named it
ENVIRONMENT_KEYS = (
    "device",
    "torch",
    "commit",
    "python",
    "data_dir",
    "started",
    "world_size",
    "threads",
    "data",
    "dataset",
)


# what the suite writes into a run directory: all that --overwrite deletes
RUN_FILES = (
    "config.json",
    "status.json",
    "metrics.csv",
    "checkpoint.pt",
    "final.pt",
    "measures.json",
    "evaluation.json",
    "output.log",
)


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, locked, different config, a damaged file)."""


class RunFailed(Exception):
    """The run cannot go on (non-finite loss, out of memory, full disk, a bad image); status.json says why."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: the step finished and a checkpoint was written. `signal` names it."""

    def __init__(self, message, signal="SIGINT"):
        super().__init__(message)
        self.signal = signal


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
    """checkpoint.pt as written by the engine: tensors and plain data only (a pickle that would run code is
    refused, as any file a user may have received); RunDirError naming the file if it is damaged or foreign."""
    try:
        state = load_tensors(path)
    except NotLoadable as e:
        raise RunDirError(f"{e}; damaged or not a checkpoint of this suite: --overwrite starts the run again") from None
    missing = [k for k in ("model", "optimizer", "rng", "iteration") if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunDirError(
            f"{path} is not a checkpoint of this suite (no {', '.join(missing)}); --overwrite starts the run again"
        )
    return state


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
        try:
            self.file = open(self.path, "a+")
        except OSError as e:
            raise RunDirError(f"cannot use {self.path.parent}: {e.strerror}; pass --out elsewhere") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise RunDirError(
                f"{self.path.parent} is in use by another process (lock held on {self.path}); wait for it or use "
                "another --out."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# --- claiming, creating and checking ---------------------------------------------------------------


@contextlib.contextmanager
def claim(run_dir, resume, overwrite):
    """Hold `run_dir` while this process trains into it: take its lock and yield a Claim, which first says whether
    the run is done already (`done`: a finished run with the same config is never trained again unless
    `overwrite`) and then makes the directory ready to train (`start`). A started run is marked done, interrupted
    or failed on the way out, by how the block ended (a full disk or out of memory raise RunFailed). Under
    torchrun rank 0 alone touches the directory and the others learn from it what it found."""
    run_dir = Path(run_dir)
    main = world()[0] == 0
    if main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only or otherwise unusable --out
            raise RunDirError(f"cannot create {run_dir}: {e.strerror}; pass --out elsewhere") from None
    with RunLock(run_dir) if main else contextlib.nullcontext():
        run = Claim(run_dir, resume, overwrite, main)
        try:
            yield run
        except Interrupted as e:
            run.mark("interrupted", str(e))
            raise
        except KeyboardInterrupt:
            run.mark("interrupted", "stopped at once by a second Ctrl-C; --resume continues from the last checkpoint")
            raise
        except (RunFailed, DiskFull) as e:
            run.mark("failed", str(e))
            raise RunFailed(str(e)) from None
        except Exception as e:  # not a known failure: the run directory still says what happened
            run.mark("failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            raise
        run.mark("done")


class Claim:
    """A run directory this process holds (see claim). Every process of a torchrun group calls `done`, then
    `start`, in that order; rank 0 decides and the others receive its answer (a RunDirError too)."""

    def __init__(self, run_dir, resume, overwrite, main):
        self.run_dir, self.resume, self.overwrite, self.main = run_dir, resume, overwrite, main
        self.started = False

    def done(self, config):
        """Whether the run is finished already with `config` (the run's config.json content; a key it lacks is
        not compared): then it is skipped, and its checkpoint is not even read. RunDirError if it finished with
        another config."""
        return self._from_rank0(self._done, config)

    def start(self, config):
        """Make the directory ready to train the run of `config`: config.json written for a new run, an existing
        one checked against it (see prepare); marked running. The checkpoint to resume from, or None."""
        resuming = self._from_rank0(self._start, config)
        checkpoint = load_checkpoint(self.run_dir / "checkpoint.pt") if resuming else None
        self.started = True  # from here on, how the block ends is written into status.json
        return checkpoint

    def mark(self, state, message=""):
        if self.main and self.started:
            _mark(self.run_dir, state, message)

    def _from_rank0(self, decide, config):
        found = from_rank0(self._or_error(decide, config) if self.main else None)
        if isinstance(found, RunDirError):
            raise found
        return found

    def _or_error(self, decide, config):
        """decide(config), or the RunDirError it raised (returned, so that under torchrun every process learns it)."""
        try:
            return decide(config)
        except RunDirError as e:
            return e
        except OSError as e:  # a read-only or vanished --out
            return RunDirError(f"cannot write to {self.run_dir}: {e.strerror}; pass --out elsewhere")

    def _done(self, config):
        for tmp in self.run_dir.glob("*.tmp"):  # a write killed before its rename; we hold the lock: nobody writes
            tmp.unlink()
        if not done_already(self.run_dir, self.overwrite):
            return False
        check_config(self.run_dir, config)
        return True

    def _start(self, config):
        resuming = prepare(self.run_dir, config, self.resume, self.overwrite)
        write_status(self.run_dir, "running")
        return resuming


def done_already(run_dir, overwrite=False):
    """Whether the run in run_dir is finished and not to be trained again (`overwrite` trains it again): claim
    then only checks its config, and the parent of --jobs children starts these first."""
    return not overwrite and read_status(run_dir)["state"] == "done"


def _mark(run_dir, state, message):
    try:
        write_status(run_dir, state, message)
    except (DiskFull, OSError):  # a full disk may refuse even this; the summary still says why
        pass


def holds_results(run_dir):
    """Whether run_dir holds anything of a run: its config, a checkpoint, weights, or a CSV with rows."""
    run_dir = Path(run_dir)
    csv = run_dir / "metrics.csv"
    return any((run_dir / name).exists() for name in ("config.json", "checkpoint.pt", "final.pt")) or (
        csv.exists() and len(read_text(csv).splitlines()) > 1
    )


def own_files(run_dir):
    """What the suite wrote into run_dir (RUN_FILES, and what a killed write left: *.tmp), nothing of the user's."""
    return [p for p in Path(run_dir).iterdir() if p.name in RUN_FILES or p.name.endswith(".tmp")]


def empty(run_dir):
    """--overwrite: delete the run's own files, nothing else."""
    for p in own_files(run_dir):
        p.unlink()


ASIDE = ".replaced"


def set_aside(run_dir):
    """--overwrite where the run trains later, elsewhere (a Slurm job): move the run's own files into
    run_dir/.replaced/, under its lock (a process training into it refuses); returns that folder, for put_back if
    the run will not train after all, or drop once it will."""
    run_dir = Path(run_dir)
    moved = run_dir / ASIDE
    if run_dir.is_dir():
        with RunLock(run_dir):
            moved.mkdir(exist_ok=True)
            for p in own_files(run_dir):
                p.rename(moved / p.name)
    return moved


def put_back(moved):
    """The files set_aside moved, back in their run directory."""
    if moved.is_dir():
        for p in moved.iterdir():
            p.rename(moved.parent / p.name)
        moved.rmdir()


def drop(moved):
    """Delete the files set_aside moved (they are the run's own files only)."""
    if moved.is_dir():
        shutil.rmtree(moved)


def prepare(run_dir, config, resume, overwrite):
    """Create the run directory, or check an existing one against `config` (see config_changes). Returns
    whether there is a checkpoint to resume from. Never overwrites results unless asked."""
    run_dir = Path(run_dir)
    exists = holds_results(run_dir)
    if exists and overwrite:
        empty(run_dir)
        exists = False
    if exists and not (run_dir / "config.json").exists():
        raise RunDirError(
            f"{run_dir} holds a run's files but no config.json (deleted, or never written): restore it to "
            f"--resume, or --overwrite to delete the run and start again."
        )
    if exists and not resume:
        raise RunDirError(
            f"{run_dir} already holds a run; pass --resume to continue it, or --overwrite to delete it and start again."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not exists:
        write_json(config, run_dir / "config.json")
        return False
    check_config(run_dir, config)
    if (run_dir / "checkpoint.pt").exists():
        check_checkpoint(run_dir, load_checkpoint(run_dir / "checkpoint.pt"))
        return True
    return False


def check_checkpoint(run_dir, state):
    """RunDirError unless checkpoint.pt is this run's and metrics.csv holds every row it was written after:
    another run's checkpoint, or a CSV cut short by hand, would mix two runs in one CSV."""
    run_dir = Path(run_dir)
    own = read_json(run_dir / "config.json")
    theirs = state.get("config")
    diffs = config_changes(own, theirs) if isinstance(theirs, dict) else ["no config in it"]
    diffs += [
        f"{k}: {own.get(k)!r} -> {theirs.get(k)!r}"
        for k in ("experiment", "run")
        if isinstance(theirs, dict) and own.get(k) != theirs.get(k)
    ]
    if diffs:
        raise RunDirError(
            f"{run_dir / 'checkpoint.pt'} is not this run's ({'; '.join(diffs)}): resuming would mix two runs; "
            f"restore the run's own checkpoint, or --overwrite to start it again."
        )
    csv = run_dir / "metrics.csv"
    rows = max(read_text(csv).count("\n") - 1, 0) if csv.exists() else 0  # complete rows below the header
    needed = state.get("csv_rows", 0)
    if rows < needed:
        raise RunDirError(
            f"{run_dir / 'metrics.csv'} has {rows} rows, but checkpoint.pt was written after {needed}: rows are "
            f"missing; restore the CSV, or --overwrite to start the run again."
        )


def record_resumption(run_dir, config, iteration):
    """Append to config.json's `resumed` list where and how the run went on at `iteration` (the ENVIRONMENT_KEYS
    that may change); returns a note when it now runs with another CPU thread count than it started with, which
    sums floats in another order: the run is then no longer bitwise the same as an unbroken one."""
    path = Path(run_dir) / "config.json"
    recorded = read_json(path)
    now = {
        "iteration": iteration,
        **{k: config[k] for k in ("threads", "device", "commit", "torch", "started") if k in config},
    }
    write_json(recorded | {"resumed": [*recorded.get("resumed", []), now]}, path)
    before = last_threads(recorded)
    if before is not None and config.get("threads") != before and config.get("device") == "cpu":
        return (
            f"resuming with {config['threads']} CPU thread(s) where it ran with {before}: not bitwise the same as "
            f"an unbroken run from here on (recorded in config.json)"
        )
    return ""


def record_threads(run_dir, iteration, threads):
    """Append to config.json's `threads_changed` list that the run trains on `threads` CPU threads from `iteration`
    on (run --jobs gives a run the threads of one that ended beside it)."""
    path = Path(run_dir) / "config.json"
    recorded = read_json(path)
    changed = [*recorded.get("threads_changed", []), {"iteration": iteration, "threads": threads}]
    write_json(recorded | {"threads_changed": changed}, path)


def last_threads(recorded):
    """The CPU threads a run last trained on, from its config.json: at its start, its resumptions and its changes
    of threads, the one at the latest iteration (None where none is recorded)."""
    events = [recorded, *recorded.get("resumed", []), *recorded.get("threads_changed", [])]
    events = [e for e in events if e.get("threads") is not None]
    return max(events, key=lambda e: e.get("iteration", 0))["threads"] if events else None


def check_config(run_dir, config):
    """RunDirError if the run in `run_dir` was started with another config (see config_changes)."""
    diffs = config_changes(read_json(Path(run_dir) / "config.json"), config)
    if diffs:
        raise RunDirError(
            f"{run_dir} holds a run with a different config ({'; '.join(diffs)}); to keep it, train the new one "
            f"elsewhere with --out DIR; --overwrite deletes this run and starts it again."
        )


def config_changes(old, new, defaults=None):
    """What differs between a run's recorded config and a new one, as "key: old -> new" strings: keys that
    decide what is computed only (not ENVIRONMENT_KEYS). A key the old config lacks counts as its value in
    `defaults` (from resnet_repro.config: a key added since the run started)."""
    defaults = SPEC_DEFAULTS if defaults is None else defaults
    diffs = [
        f"{k}: {_json(old.get(k))!r} -> {_json(v)!r}"
        for k, v in new.items()
        if k not in ENVIRONMENT_KEYS and k != "dataset_checksum" and _json(old.get(k, defaults.get(k))) != _json(v)
    ]
    if "dataset_checksum" in new and old.get("dataset_checksum") != new["dataset_checksum"]:
        diffs.append(
            f"data: {old.get('data')!r} -> {new.get('data')!r} (other images: checksum "
            f"{str(old.get('dataset_checksum'))[:8]} -> {new['dataset_checksum'][:8]})"
        )
    return diffs


def _json(v):
    return list(v) if isinstance(v, tuple) else v


def unfinished(exp_dir, runs):
    """The runs of `runs` that exist under exp_dir and are not done."""
    return [
        run
        for run in runs
        if (Path(exp_dir) / run / "config.json").exists() and read_status(Path(exp_dir) / run)["state"] != "done"
    ]
