"""The training engine: one run of the paper's recipe, one CSV row per epoch, resumable exactly.

Iteration based like the paper: an epoch is one pass over a fresh permutation of the training split
in full batches (the remainder is left out, a different one each epoch); the run stops at
`spec.iterations`, possibly inside an epoch, which then gets its row too. The training error of a row is
over that epoch's augmented mini-batches in train mode, as the paper's curves; the test error is over
the whole evaluation split. Metrics are summed on the device and read once per log interval, not per step.
"""

import contextlib
import math
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from resnet_repro import rundir
from resnet_repro.config import SPEC_FIELDS
from resnet_repro.distributed import all_sum, barrier, first_set, from_rank0, rank0_buffers, world
from resnet_repro.models import build_model, load_pretrained, num_params, parse_name, pretrained_state_dict
from resnet_repro.rundir import RunDirError
from resnet_repro.sources import DataError

LOG_EVERY = 50  # iterations between progress-bar updates (each one is a host-device sync)
WARMUP_CHECK = 50  # iterations between checks of the warm-up's training error
# a config key added since a run started, at its default, is no change on --resume
DEFAULTS = {k: list(f.default) if isinstance(f.default, tuple) else f.default for k, f in SPEC_FIELDS.items()}


class RunFailed(Exception):
    """The run cannot go on (non-finite loss, out of memory, full disk); its directory says why."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: the step finished and a checkpoint was written."""


def lr_at(it, spec, warmup_end=None):
    """The learning rate of iteration `it` (0-based). warmup_end: the iteration at which the warm-up
    ended (None while it lasts; ignored without warm-up)."""
    if spec.warmup_lr > 0 and (warmup_end is None or it < warmup_end):
        return spec.warmup_lr
    if spec.schedule == "linear":
        lr = spec.lr * min(1.0, (spec.iterations - it) / (spec.iterations - spec.ramp))
    else:
        lr = spec.lr * spec.lr_decay ** sum(it >= m for m in spec.milestones)
    return lr * (it + 1) / spec.ramp if it < spec.ramp else lr


def git_commit():
    root = Path(__file__).resolve().parent.parent
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


def run_config(spec, dataset, *, experiment, run, quick, device, data_dir):
    """What config.json records: the resolved spec, the model's facts, the data and the environment."""
    kind, depth = parse_name(spec.model)
    model = build_model(spec.model, dataset.num_classes, spec.shortcut, spec.stem)
    return {
        "experiment": experiment,
        "run": run,
        **asdict(spec),
        "shortcut": model.shortcut,
        "stem": model.stem,
        "depth": depth,
        "residual": kind == "resnet",
        "params": num_params(model),
        "num_classes": dataset.num_classes,
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "train_images": len(dataset.train),
        "test_images": len(dataset.test),
        "quick": quick,
        "device": device_name(device),
        "torch": str(torch.__version__),
        "commit": git_commit(),
        "python": sys.version.split()[0],
        "world_size": world()[1],  # processes under torchrun, each training a shard of every batch
        "threads": torch.get_num_threads(),  # CPU threads of this process (run --jobs sets them)
        "data_dir": str(data_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@contextlib.contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag that the loop reads after each step; a second SIGINT stops at once, unless it
    comes within a second of the first (one Ctrl-C can arrive twice: from the terminal and forwarded by `uv run`)."""
    flag = {"signal": None, "at": 0.0}

    def handler(signum, frame):
        if flag["signal"] is not None:
            if signum == signal.SIGINT and time.monotonic() - flag["at"] > 1.0:
                raise KeyboardInterrupt
            return
        flag["signal"], flag["at"] = signal.Signals(signum).name, time.monotonic()
        tqdm.write(f"{flag['signal']}: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)")

    installed = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            installed[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: no signal handling
        pass
    try:
        yield flag
    finally:
        for s, previous in installed.items():
            signal.signal(s, previous)


def autocast(device, spec):
    device = torch.device(device)
    bf16 = spec.precision == "bf16" or (spec.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _data_errors(batches):
    """A bad image met by a DataLoader worker ends the run with its one-line message, not a worker traceback."""
    try:
        yield from batches
    except DataError as e:
        raise RunFailed(str(e).strip().splitlines()[-1].split("DataError: ")[-1]) from None  # a worker's is "...DataError: msg"


@torch.no_grad()
def evaluate(model, split, mean, spec, device, views=1):
    """(mean loss, top-1 error %, top-5 error %) over a whole split in eval mode, one host sync at the end.
    views=10: the softmax averaged over AlexNet's 10 crops (stream splits)."""
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    rank, world_size = world()
    for x, y in _data_errors(split.eval_batches(mean, spec.eval_batch_size, device, rank, world_size, views)):
        x = x.flatten(0, 1) if views > 1 else x
        if spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, spec):
            logits = model(x).float()
        if views > 1:  # log of the mean probability over the views, without underflow
            log_p = logits.log_softmax(1).view(len(y), views, -1).logsumexp(1) - math.log(views)
        else:
            log_p = logits.log_softmax(1)
        top5 = log_p.topk(min(5, log_p.shape[1]), dim=1).indices
        sums += torch.stack([F.nll_loss(log_p, y, reduction="sum"), (top5[:, 0] != y).sum(), (top5 != y[:, None]).all(1).sum()])
    model.train()
    loss_sum, errors, errors5 = all_sum(sums).tolist()
    return loss_sum / len(split), 100.0 * errors / len(split), 100.0 * errors5 / len(split)


def train(spec, dataset, run_dir, *, experiment, run, device="cpu", quick=False, data_dir="data",
          resume=False, overwrite=False, progress=True, deterministic=False):
    """Train one run into `run_dir`. Returns a RunResult; a finished run with the same config is skipped,
    never trained again unless `overwrite`. Raises RunDirError for a run directory that cannot be used
    (an unfinished run without `resume`, a different config), Interrupted on SIGINT/SIGTERM (after a checkpoint)."""
    device = torch.device(device)
    run_dir = Path(run_dir)
    config = run_config(spec, dataset, experiment=experiment, run=run, quick=quick, device=device, data_dir=data_dir)
    main = world()[0] == 0  # under torchrun only rank 0 touches the run directory
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with rundir.RunLock(run_dir) if main else contextlib.nullcontext():
        plan, state = None, None
        if main:
            try:
                if not overwrite and rundir.read_status(run_dir)["state"] == "done":
                    rundir.prepare(run_dir, config, True, False, DEFAULTS)  # still refuses a changed config
                    plan = "skip"
                else:
                    state = rundir.prepare(run_dir, config, resume, overwrite, DEFAULTS)
                    rundir.write_status(run_dir, "running")
                    plan = "train" if state is None else "resume"
            except RunDirError as e:
                plan = e
        plan = from_rank0(plan)
        if isinstance(plan, RunDirError):
            raise plan
        if plan == "skip":
            return rundir.result(run_dir, "skipped", "done already; --overwrite (or another --out) trains it again")
        if plan == "resume" and not main:
            state = rundir.load_checkpoint(run_dir / "checkpoint.pt")

        def mark(status, message):
            if main:
                try:
                    rundir.write_status(run_dir, status, message)
                except (rundir.DiskFull, OSError):  # a full disk may refuse even this; the message still reaches the summary
                    pass

        try:
            return _train(spec, dataset, run_dir, config, state, device, progress and main, deterministic)
        except Interrupted as e:
            mark("interrupted", str(e))
            raise
        except (RunFailed, rundir.DiskFull, torch.OutOfMemoryError) as e:
            message = str(e)
            if isinstance(e, torch.OutOfMemoryError):
                message = (f"out of GPU memory at batch size {spec.batch_size}; try a smaller batch "
                           f"(--set batch_size={spec.batch_size // 2}) or fewer concurrent runs")
            mark("failed", message)
            return rundir.result(run_dir, "failed", message)
        except KeyboardInterrupt:
            mark("interrupted", "stopped at once by a second Ctrl-C; --resume continues from the last checkpoint")
            raise
        except Exception as e:  # not a known failure: the run directory still says what happened
            mark("failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            raise


def setup_model(spec, num_classes, device):
    """The model (initialised on the CPU from spec.seed, so any device starts from the same weights),
    the callable that trains it (DistributedDataParallel under torchrun, compiled or not), and its optimizer."""
    device = torch.device(device)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, num_classes, spec.shortcut, spec.stem)
    model = model.to(device, memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                                fused=True if device.type == "cuda" else None)
    forward = model
    if dist.is_initialized():  # gradients averaged over the processes; BN statistics stay per process, as on the paper's 2 GPUs
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, (torch.compile(forward) if spec.compile else forward), optimizer


def train_step(forward, optimizer, x, labels, spec, device):
    """One SGD step on a batch from train_batches: forward under autocast, backward, update. Returns the
    summed loss and the number of errors as device scalars: no host sync."""
    if spec.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, spec):
        logits = forward(x)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * len(labels), (logits.argmax(1) != labels).sum()


def _train(spec, dataset, run_dir, config, state, device, progress, deterministic):
    if deterministic:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    model, forward, optimizer = setup_model(spec, dataset.num_classes, device)
    main, distributed = world()[0] == 0, world()[1] > 1
    if spec.init_weights and state is None:
        try:
            fresh = load_pretrained(model, pretrained_state_dict(spec.model, spec.init_weights))
        except ValueError as e:
            raise RunFailed(str(e)) from None
        tqdm.write(f"{config['run']}: started from {spec.init_weights}" + (f" ({', '.join(fresh)} new)" if fresh else ""))
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    train_split, mean, batch = dataset.train, dataset.mean, spec.batch_size
    per_epoch = len(train_split) // batch
    if per_epoch == 0:
        raise RunFailed(f"the training split has {len(train_split)} images, fewer than one batch of {batch}")

    it, epoch, rows, warmup_end, best = 0, 0, 0, None, math.inf
    perm, pos = None, 0  # the epoch in progress: its order and position
    sums, row_steps, train_seconds = None, 0, 0.0  # since the last CSV row: (loss sum, errors), steps, training time
    if state is None and main:  # rows of a start that died before its first checkpoint are redone, not kept twice
        rundir.truncate_rows(run_dir / "metrics.csv", 0)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        it, epoch, rows, warmup_end, best = state["iteration"], state["epoch"], state["csv_rows"], state["warmup_end"], state["best_test_err"]
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        generator.set_state(state["rng"]["data"])
        if state["perm"] is not None:
            perm, pos = state["perm"].to(device), state["pos"]
        if state["sums"] is not None:
            row_steps, train_seconds = state.get("row_steps", state["pos"]), state["train_seconds"]  # older checkpoints: a row per epoch
            sums = state["sums"].to(device) if main else torch.zeros_like(state["sums"], device=device)  # summed over processes
        if main:
            rundir.truncate_rows(run_dir / "metrics.csv", rows)
        tqdm.write(f"{config['run']}: resuming at iteration {it} (epoch {epoch + 1})")

    def save_checkpoint():
        row_sums = None if sums is None else all_sum(sums.clone()).cpu()  # a collective: before the rank check
        if not main:
            return
        rundir.save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": it, "epoch": epoch,
            "csv_rows": rows, "warmup_end": warmup_end, "best_test_err": best,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "data": generator.get_state()},
            "perm": None if perm is None else perm.cpu(), "pos": pos, "sums": row_sums, "row_steps": row_steps,
            "train_seconds": train_seconds, "config": config,
        }, run_dir / "checkpoint.pt")  # fmt: skip

    model.train()
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)  # first iteration with a non-finite loss
    bar = tqdm(total=spec.iterations, initial=it, desc=config["run"], unit="it", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    def stopping():
        # Under torchrun the processes agree at LOG_EVERY iterations (a collective), so all stop at one step.
        if not distributed:
            return stop["signal"] is not None
        if it % LOG_EVERY:
            return False
        return bool(all_sum(torch.tensor(int(stop["signal"] is not None), device=device)))

    with stop_requests() as stop, bar:
        while it < spec.iterations:
            if perm is None:
                perm, pos = torch.randperm(len(train_split), device=device, generator=generator), 0
            if sums is None:
                sums = torch.zeros(2, device=device, dtype=torch.float64)  # this process's share; all_sum when read
                row_steps, train_seconds = 0, 0.0
            window, window_steps = sums.clone(), row_steps  # warm-up: the error since the last check
            batches = _data_errors(train_split.train_batches(perm, pos, batch, mean, generator, spec.seed, epoch, device, *world()))
            start = time.perf_counter()
            stopped = row_due = False
            while pos < per_epoch and it < spec.iterations and not stopped and not row_due:
                lr = lr_at(it, spec, warmup_end)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, labels = next(batches)
                loss, errors = train_step(forward, optimizer, x, labels, spec, device)
                sums += torch.stack([loss, errors])
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), it, first_bad)
                it, pos, row_steps = it + 1, pos + 1, row_steps + 1
                bar.update(1)  # host-side only; the numbers in the postfix wait for LOG_EVERY
                if spec.warmup_lr > 0 and warmup_end is None and it % WARMUP_CHECK == 0:
                    err = 100.0 * all_sum(sums[1] - window[1]).item() / ((row_steps - window_steps) * batch)  # sync
                    window, window_steps = sums.clone(), row_steps
                    if err < spec.warmup_until_err:
                        warmup_end = it
                        tqdm.write(f"{config['run']}: warm-up ended at iteration {it} (training error {err:.1f}%)")
                if it % LOG_EVERY == 0:
                    _check_finite(first_bad, spec, warmup_end)  # sync
                    loss_sum, errors = all_sum(sums.clone()).tolist()
                    n = row_steps * batch
                    bar.set_postfix_str(f"lr={lr:.3g} loss={loss_sum / n:.3f} err={100 * errors / n:.1f}% "
                                        f"img/s={n / (train_seconds + time.perf_counter() - start):.0f}")
                stopped = stopping()
                row_due = spec.log_every > 0 and it % spec.log_every == 0
            _check_finite(first_bad, spec, warmup_end)
            loss_sum, errors = all_sum(sums.clone()).tolist()  # sync: the interval's training time is complete here
            train_seconds += time.perf_counter() - start
            if pos == per_epoch:
                epoch, perm, pos = epoch + 1, None, 0
            # a row per epoch (log_every = 0) or every log_every iterations, and one at the end
            if row_due or it == spec.iterations or (spec.log_every == 0 and perm is None):
                n = row_steps * batch
                eval_start = time.perf_counter()
                if distributed:
                    rank0_buffers(model)
                test_loss, test_err, _ = evaluate(model if distributed else forward, dataset.test, mean, spec, device)
                best = min(best, test_err)
                rows += 1
                row = {
                    "experiment": config["experiment"], "run": config["run"], "model": spec.model, "depth": config["depth"],
                    "residual": config["residual"], "epoch": round(it * batch / len(train_split), 3) if spec.log_every else rows,
                    "iteration": it, "lr": f"{lr_at(it - 1, spec, warmup_end):.6g}", "train_loss": f"{loss_sum / n:.6g}",
                    "train_err": f"{100 * errors / n:.4f}", "test_loss": f"{test_loss:.6g}", "test_err": f"{test_err:.4f}",
                    "epoch_seconds": f"{train_seconds + time.perf_counter() - eval_start:.3f}", "images_per_second": f"{n / train_seconds:.1f}",
                }  # fmt: skip
                if main:
                    rundir.append_row(run_dir / "metrics.csv", row)
                sums = None
                save_checkpoint()
                bar.set_postfix_str(f"row {rows}: train err {100 * errors / n:.1f}%, test err {test_err:.2f}%")
            if stopped:
                if sums is not None:
                    save_checkpoint()
                raise Interrupted(f"{stop['signal'] or 'a signal to another process'} at iteration {it}; checkpoint written. "
                                  f"Continue with the same command plus --resume.")

    if spec.ten_crop:  # Table 2's test, once at the end
        if distributed:
            rank0_buffers(model)
        tqdm.write(f"{config['run']}: 10-crop test on {len(dataset.test):,} images")
        test_loss, top1, top5 = evaluate(model if distributed else forward, dataset.test, mean, spec, device, views=10)
        if main:
            rundir.write_json({"views": 10, "iteration": it, "images": len(dataset.test), "test_loss": round(test_loss, 6),
                             "top1_err": round(top1, 4), "top5_err": round(top5, 4)}, run_dir / "evaluation.json")
    if main:
        rundir.save({"model": model.state_dict(), "config": config}, run_dir / "final.pt")
        rundir.write_status(run_dir, "done")
    barrier()  # under torchrun the others read the result rank 0 wrote
    result = rundir.result(run_dir, "done")
    result.stop_signal = stop["signal"] or ""
    return result


def _check_finite(first_bad, spec, warmup_end):
    bad = first_set(first_bad)  # the earliest over the processes
    if bad >= 0:
        raise RunFailed(f"non-finite loss at iteration {bad} (lr {lr_at(bad, spec, warmup_end):g}); stopped, the last good checkpoint is kept")
