"""The training engine: one run of the paper's recipe, a CSV row per epoch (or per `log_every` iterations),
resumable exactly.

Iteration based like the paper: an epoch is one pass over a fresh permutation of the training split
in full batches (the remainder is left out, a different one each epoch); the run stops at
`spec.iterations`, possibly inside an epoch, which then gets its row too. The training error of a row is
over the augmented mini-batches since the previous row, in train mode, as the paper's curves; the test error is over
the whole evaluation split. Metrics are summed on the device and read once per log interval, not per step.
"""

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from resnet_repro import provenance, rundir
from resnet_repro.config import SPEC_FIELDS
from resnet_repro.distributed import all_sum, barrier, first_set, from_rank0, rank0_buffers, world
from resnet_repro.models import build_model, load_pretrained, pretrained_state_dict
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
    except DataError as e:  # a worker's arrives as "...DataError: <message>" after its traceback
        raise RunFailed(str(e).strip().splitlines()[-1].split("DataError: ")[-1]) from None


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
        sums += torch.stack(
            [F.nll_loss(log_p, y, reduction="sum"), (top5[:, 0] != y).sum(), (top5 != y[:, None]).all(1).sum()]
        )
    model.train()
    loss_sum, errors, errors5 = all_sum(sums).tolist()
    return loss_sum / len(split), 100.0 * errors / len(split), 100.0 * errors5 / len(split)


def train(
    spec,
    dataset,
    run_dir,
    *,
    experiment,
    run,
    device="cpu",
    quick=False,
    data_dir="data",
    resume=False,
    overwrite=False,
    progress=True,
    deterministic=False,
):
    """Train one run into `run_dir`. Returns a RunResult; a finished run with the same config is skipped,
    never trained again unless `overwrite`. Raises RunDirError for a run directory that cannot be used
    (an unfinished run without `resume`, a different config), Interrupted on SIGINT/SIGTERM (after a checkpoint)."""
    device = torch.device(device)
    run_dir = Path(run_dir)
    config = provenance.run_config(
        spec, dataset, experiment=experiment, run=run, quick=quick, device=device, data_dir=data_dir
    )
    main = world()[0] == 0  # under torchrun only rank 0 touches the run directory
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with rundir.RunLock(run_dir) if main else contextlib.nullcontext():
        plan, state = _plan(run_dir, config, resume, overwrite) if main else (None, None)
        plan = from_rank0(plan)  # the checkpoint itself is read from the file by each process
        if isinstance(plan, RunDirError):
            raise plan
        if plan == "skip":
            return rundir.result(run_dir, "skipped", "done already; --overwrite (or another --out) trains it again")
        if plan == "resume":  # rank 0 read it already; the others read it too
            state = state if main else rundir.load_checkpoint(run_dir / "checkpoint.pt")

        def mark(status, message):
            if main:
                try:
                    rundir.write_status(run_dir, status, message)
                except (rundir.DiskFull, OSError):  # a full disk may refuse even this; the summary still says why
                    pass

        if deterministic:
            torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
        try:
            return Engine(spec, dataset, run_dir, config, device, progress and main).run(state)
        except Interrupted as e:
            mark("interrupted", str(e))
            raise
        except (RunFailed, rundir.DiskFull, torch.OutOfMemoryError) as e:
            message = str(e)
            if isinstance(e, torch.OutOfMemoryError):
                message = (
                    f"out of GPU memory at batch size {spec.batch_size}; try a smaller batch "
                    f"(--set batch_size={spec.batch_size // 2}) or fewer concurrent runs"
                )
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
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=spec.lr,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
        fused=True if device.type == "cuda" else None,
    )
    forward = model
    # under torchrun gradients are averaged over the processes; BN statistics stay per process (the paper's 2 GPUs)
    if dist.is_initialized():
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
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


def _plan(run_dir, config, resume, overwrite):
    """("skip" | "train" | "resume", the checkpoint to resume from); a RunDirError (not raised) for a run directory
    that cannot be used, so that under torchrun every process learns it from rank 0."""
    try:
        if not overwrite and rundir.read_status(run_dir)["state"] == "done":
            rundir.prepare(run_dir, config, True, False, DEFAULTS)  # still refuses a changed config
            return "skip", None
        state = rundir.prepare(run_dir, config, resume, overwrite, DEFAULTS)
        rundir.write_status(run_dir, "running")
        return ("train" if state is None else "resume"), state
    except RunDirError as e:
        return e, None


@dataclass
class Progress:
    """Where a run stands. checkpoint.pt holds these keys beside the weights, the optimizer and the RNG states."""

    iteration: int = 0
    epoch: int = 0  # epochs completed
    csv_rows: int = 0
    warmup_end: int | None = None  # the iteration at which the warm-up ended (None while it lasts)
    best_test_err: float = math.inf
    perm: torch.Tensor | None = None  # the epoch in progress: its order of the training images
    pos: int = 0  # and its batches done
    sums: torch.Tensor | None = None  # since the last row: (loss sum, errors) of this process, on the device
    row_steps: int = 0  # and its steps
    train_seconds: float = 0.0  # and its training time

    @classmethod
    def from_checkpoint(cls, state, device, main):
        p = cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})
        p.row_steps = state.get("row_steps", state["pos"])  # older checkpoints: a row per epoch
        p.perm = None if p.perm is None else p.perm.to(device)
        if p.sums is not None:  # summed over the processes when read: rank 0 carries them
            p.sums = p.sums.to(device) if main else torch.zeros_like(p.sums, device=device)
        return p


class Engine:
    """One run's model, optimizer, data order and progress, and the parts of its loop; `run` reads top to bottom."""

    def __init__(self, spec, dataset, run_dir, config, device, progress):
        self.spec, self.dataset, self.run_dir, self.config, self.device = spec, dataset, run_dir, config, device
        self.main, self.distributed = world()[0] == 0, world()[1] > 1  # under torchrun only rank 0 writes
        self.model, self.forward, self.optimizer = setup_model(spec, dataset.num_classes, device)
        self.generator = torch.Generator(device=device).manual_seed(spec.seed)  # data order and augmentation
        self.p = Progress()
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)  # first iteration with a non-finite loss
        self.per_epoch = len(dataset.train) // spec.batch_size
        if self.per_epoch == 0:
            raise RunFailed(
                f"the training split has {len(dataset.train)} images, fewer than one batch of {spec.batch_size}"
            )
        self.bar = tqdm(
            total=spec.iterations,
            desc=config["run"],
            unit="it",
            disable=not progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def run(self, state):
        """Train from `state` (a checkpoint, or None) to the end; RunResult, or Interrupted after a checkpoint."""
        with stop_requests() as self.stop, self.bar:
            self.restore(state)
            while self.p.iteration < self.spec.iterations:
                stopped, row_due = self.steps()
                if self.p.pos == self.per_epoch:
                    self.p.epoch, self.p.perm, self.p.pos = self.p.epoch + 1, None, 0
                # a row per epoch (log_every = 0) or every log_every iterations, and one at the end
                if (
                    row_due
                    or self.p.iteration == self.spec.iterations
                    or (self.spec.log_every == 0 and self.p.perm is None)
                ):
                    self.write_row()
                    self.save_checkpoint()
                if stopped:
                    if self.p.sums is not None:
                        self.save_checkpoint()
                    raise Interrupted(
                        f"{self.stop['signal'] or 'a signal to another process'} at iteration {self.p.iteration}; "
                        f"checkpoint written. Continue with the same command plus --resume."
                    )
        return self.finish()

    def restore(self, state):
        p, run = self.p, self.config["run"]
        if state is None:
            if self.main:  # rows of a start that died before its first checkpoint are redone, not kept twice
                rundir.truncate_rows(self.run_dir / "metrics.csv", 0)
            if self.spec.init_weights:
                try:
                    fresh = load_pretrained(self.model, pretrained_state_dict(self.spec.model, self.spec.init_weights))
                except ValueError as e:
                    raise RunFailed(str(e)) from None
                tqdm.write(
                    f"{run}: started from {self.spec.init_weights}" + (f" ({', '.join(fresh)} new)" if fresh else "")
                )
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.generator.set_state(state["rng"]["data"])
        self.p = p = Progress.from_checkpoint(state, self.device, self.main)
        if self.main:
            rundir.truncate_rows(self.run_dir / "metrics.csv", p.csv_rows)
        self.bar.update(p.iteration)
        tqdm.write(f"{run}: resuming at iteration {p.iteration} (epoch {p.epoch + 1})")

    def steps(self):
        """SGD steps until the epoch ends, a row is due, the run ends or a stop is asked: (stopped, row due)."""
        spec, p, batch = self.spec, self.p, self.spec.batch_size
        if p.perm is None:
            p.perm, p.pos = torch.randperm(len(self.dataset.train), device=self.device, generator=self.generator), 0
        if p.sums is None:
            p.sums, p.row_steps, p.train_seconds = torch.zeros(2, device=self.device, dtype=torch.float64), 0, 0.0
        window, window_steps = p.sums.clone(), p.row_steps  # warm-up: the error since the last check
        batches = _data_errors(
            self.dataset.train.train_batches(
                p.perm, p.pos, batch, self.dataset.mean, self.generator, spec.seed, p.epoch, self.device, *world()
            )
        )
        start = time.perf_counter()
        stopped = row_due = False
        while p.pos < self.per_epoch and p.iteration < spec.iterations and not stopped and not row_due:
            lr = lr_at(p.iteration, spec, p.warmup_end)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, labels = next(batches)
            loss, errors = train_step(self.forward, self.optimizer, x, labels, spec, self.device)
            p.sums += torch.stack([loss, errors])
            self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), p.iteration, self.first_bad)
            p.iteration, p.pos, p.row_steps = p.iteration + 1, p.pos + 1, p.row_steps + 1
            self.bar.update(1)  # host-side only; the numbers in the postfix wait for LOG_EVERY
            if spec.warmup_lr > 0 and p.warmup_end is None and p.iteration % WARMUP_CHECK == 0:
                err = 100.0 * all_sum(p.sums[1] - window[1]).item() / ((p.row_steps - window_steps) * batch)  # sync
                window, window_steps = p.sums.clone(), p.row_steps
                if err < spec.warmup_until_err:
                    p.warmup_end = p.iteration
                    tqdm.write(
                        f"{self.config['run']}: warm-up ended at iteration {p.iteration} (training error {err:.1f}%)"
                    )
            if p.iteration % LOG_EVERY == 0:
                self.check_finite()  # sync
                loss_sum, errors = all_sum(p.sums.clone()).tolist()
                n = p.row_steps * batch
                self.bar.set_postfix_str(
                    f"lr={lr:.3g} loss={loss_sum / n:.3f} err={100 * errors / n:.1f}% "
                    f"img/s={n / (p.train_seconds + time.perf_counter() - start):.0f}"
                )
            stopped = self.stopping()
            row_due = spec.log_every > 0 and p.iteration % spec.log_every == 0
        self.check_finite()
        # (loss sum, errors) over the processes; a sync: the interval's training time is complete here
        self.totals = all_sum(p.sums.clone()).tolist()
        p.train_seconds += time.perf_counter() - start
        return stopped, row_due

    def stopping(self):
        """Whether a SIGINT/SIGTERM asks to stop. Under torchrun the processes agree every LOG_EVERY iterations
        (a collective), so all stop at one step."""
        if not self.distributed:
            return self.stop["signal"] is not None
        if self.p.iteration % LOG_EVERY:
            return False
        return bool(all_sum(torch.tensor(int(self.stop["signal"] is not None), device=self.device)))

    def check_finite(self):
        bad = first_set(self.first_bad)  # the earliest over the processes
        if bad >= 0:
            lr = lr_at(bad, self.spec, self.p.warmup_end)
            raise RunFailed(
                f"non-finite loss at iteration {bad} (lr {lr:g}); stopped, the last good checkpoint is kept"
            )

    def write_row(self):
        """Test, then append the CSV row of the interval since the last one."""
        spec, p, config, batch = self.spec, self.p, self.config, self.spec.batch_size
        loss_sum, errors = self.totals
        n = p.row_steps * batch
        eval_start = time.perf_counter()
        test_loss, test_err, _ = self.evaluate()
        p.best_test_err = min(p.best_test_err, test_err)
        p.csv_rows += 1
        row = {
            "experiment": config["experiment"], "run": config["run"], "model": spec.model, "depth": config["depth"],
            "residual": config["residual"], "iteration": p.iteration, "lr": f"{lr_at(p.iteration - 1, spec, p.warmup_end):.6g}",
            "epoch": round(p.iteration * batch / len(self.dataset.train), 3) if spec.log_every else p.csv_rows,
            "train_loss": f"{loss_sum / n:.6g}", "train_err": f"{100 * errors / n:.4f}",
            "test_loss": f"{test_loss:.6g}", "test_err": f"{test_err:.4f}",
            "epoch_seconds": f"{p.train_seconds + time.perf_counter() - eval_start:.3f}",
            "images_per_second": f"{n / p.train_seconds:.1f}",
        }  # fmt: skip
        if self.main:
            rundir.append_row(self.run_dir / "metrics.csv", row)
        p.sums = None
        self.bar.set_postfix_str(f"row {p.csv_rows}: train err {100 * errors / n:.1f}%, test err {test_err:.2f}%")

    def evaluate(self, views=1):
        if self.distributed:
            rank0_buffers(self.model)
        model = self.model if self.distributed else self.forward
        return evaluate(model, self.dataset.test, self.dataset.mean, self.spec, self.device, views)

    def save_checkpoint(self):
        p = self.p
        sums = None if p.sums is None else all_sum(p.sums.clone()).cpu()  # a collective: before the rank check
        if not self.main:
            return
        cuda = self.device.type == "cuda"
        rundir.save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **vars(p),
            "perm": None if p.perm is None else p.perm.cpu(), "sums": sums, "config": self.config,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
                    "data": self.generator.get_state()},
        }, self.run_dir / "checkpoint.pt")  # fmt: skip

    def finish(self):
        """The 10-crop test if the spec asks for it (Table 2), final.pt, status done; the RunResult."""
        if self.spec.ten_crop:
            tqdm.write(f"{self.config['run']}: 10-crop test on {len(self.dataset.test):,} images")
            test_loss, top1, top5 = self.evaluate(views=10)
            if self.main:
                rundir.write_json(
                    {
                        "views": 10,
                        "iteration": self.p.iteration,
                        "images": len(self.dataset.test),
                        "test_loss": round(test_loss, 6),
                        "top1_err": round(top1, 4),
                        "top5_err": round(top5, 4),
                    },
                    self.run_dir / "evaluation.json",
                )
        if self.main:
            rundir.save({"model": self.model.state_dict(), "config": self.config}, self.run_dir / "final.pt")
            rundir.write_status(self.run_dir, "done")
        barrier()  # under torchrun the others read the result rank 0 wrote
        result = rundir.result(self.run_dir, "done")
        result.stop_signal = self.stop["signal"] or ""
        return result
