"""The training engine: one run of the paper's recipe, a CSV row per epoch (or per `log_every` iterations),
resumable exactly.

Iteration based like the paper: an epoch is one pass over a fresh permutation of the training split
in full batches (the remainder is left out, a different one each epoch); the run stops at
`spec.iterations`, possibly inside an epoch, which then gets its row too. The training error of a row is
over the augmented mini-batches since the previous row, in train mode, as the paper's curves; the test error is over
the whole evaluation split. Metrics are summed on the device and read once per row, not per step.
"""

import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from tqdm import tqdm

from resnet_repro import files
from resnet_repro.data import EpochPlan
from resnet_repro.engine import devices, metrics, provenance, recipe, rundir
from resnet_repro.engine.distributed import all_sum, first_set, peer_lost, rank0_buffers, world
from resnet_repro.engine.rundir import Interrupted, RunFailed
from resnet_repro.engine.stopping import stop_requests
from resnet_repro.models import load_pretrained, num_params, pretrained_state_dict

SYNC_EVERY = 50  # iterations between host syncs: the progress bar's numbers, the non-finite check, torchrun's stop vote
WARMUP_CHECK = 50  # iterations between checks of the warm-up's training error
PEER_LOST = (
    "another process of this torchrun job stopped (its message says why); the last checkpoint is kept: --resume "
    "continues from it"
)


@dataclass(frozen=True)
class Outcome:
    state: str  # done | skipped | failed
    message: str = ""
    stop_signal: str = ""  # a SIGINT/SIGTERM that came while the run was finishing: start no further run


def train(job, dataset):
    """Train a plan.Job on `dataset` into its run directory; a finished run with the same config is skipped, never
    trained again unless job.overwrite. Raises Interrupted on SIGINT/SIGTERM (after a checkpoint) and RunDirError
    for a run directory that cannot be used as asked (an unfinished run without job.resume, a changed config)."""
    config = provenance.run_config(job, dataset)
    try:
        with rundir.claim(job.run_dir, job.resume, job.overwrite) as run:
            if run.done(config):
                return Outcome("skipped", "done already; --overwrite (or another --out) trains it again")
            model = recipe.new_model(job.spec, dataset.num_classes)  # built once, and not for a run done already
            config = with_params(config, model)
            checkpoint = run.start(config)
            stop_signal = Engine(job, dataset, model, config).run(checkpoint)
    except RunFailed as e:
        return Outcome("failed", str(e))
    return Outcome("done", stop_signal=stop_signal)


def with_params(config, model):
    """The run's config with its model's parameter count, after `residual` where config.json has always had it."""
    items = list(config.items())
    at = list(config).index("residual") + 1
    return dict([*items[:at], ("params", num_params(model)), *items[at:]])


@dataclass
class Progress:
    """Where a run stands. checkpoint.pt holds these keys beside the weights, the optimizer, the RNG states and
    the meter's (`sums`, `row_steps`, `train_seconds`)."""

    iteration: int = 0
    epoch: int = 0  # epochs completed
    csv_rows: int = 0
    warmup_end: int | None = None  # the iteration at which the warm-up ended (None while it lasts)
    lr_drops: list[int] = field(default_factory=list)  # schedule = "plateau": the iterations from which the lr fell
    plateau_best: float = math.inf  # ... the lowest watched error since the last fall
    plateau_stalled: int = 0  # ... and the rows since it last improved
    best_test_err: float = math.inf
    perm: torch.Tensor | None = None  # the epoch in progress: its order of the training images
    pos: int = 0  # and its batches done


class Engine:
    """One run's model, optimizer, data order, progress and meter; `run` reads top to bottom."""

    def __init__(self, job, dataset, model, config):
        self.spec, self.dataset, self.model, self.config = job.spec, dataset, model, config
        self.run_dir, self.device = Path(job.run_dir), torch.device(job.device)
        self.main, self.distributed = world()[0] == 0, world()[1] > 1  # under torchrun only rank 0 writes
        self.forward, self.optimizer = recipe.prepare(model, self.spec, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.spec.seed)  # data order, augmentation
        self.p, self.meter = Progress(), recipe.Meter(self.device, self.spec.batch_size)
        self.first_bad = torch.full((), -1, device=self.device, dtype=torch.int64)  # first non-finite loss
        self.per_epoch = len(dataset.train) // self.spec.batch_size
        if self.per_epoch == 0:
            raise RunFailed(
                f"the training split has {len(dataset.train)} images, fewer than one batch of {self.spec.batch_size}"
            )
        self.bar = tqdm(
            total=self.spec.iterations,
            desc=job.run,
            unit="it",
            disable=not (job.progress and self.main),
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def run(self, checkpoint):
        """Train from `checkpoint` (or from the start) to the end. Returns the signal that came while the run was
        finishing ("" if none); raises Interrupted after a checkpoint when one came before."""
        with stop_requests() as self.stop, self.bar:
            try:
                self.resume(checkpoint) if checkpoint else self.start()
                while self.p.iteration < self.spec.iterations:
                    stopped = self.steps()  # to the epoch's end, the next row, or a stop request
                    if self.row_due():
                        self.write_row()  # test, and the row of the interval
                        self.save_checkpoint()
                        self.take_threads()
                    if stopped:
                        self.interrupt()  # a checkpoint, then Interrupted
                self.finish()  # the 10-crop test if asked, final.pt
            except torch.OutOfMemoryError:
                batch = self.spec.batch_size
                raise RunFailed(
                    f"out of GPU memory at batch size {batch}; try a smaller batch "
                    f"(--set batch_size={batch // 2}) or fewer concurrent runs"
                ) from None
            except RuntimeError as e:
                if not peer_lost(e):
                    raise
                raise RunFailed(PEER_LOST) from None
        return self.stop["signal"] or ""

    def start(self):
        if self.main:  # rows of a start that died before its first checkpoint are redone, not kept twice
            metrics.truncate_rows(self.run_dir / "metrics.csv", 0)
        if self.spec.init_weights:
            try:
                fresh = load_pretrained(self.model, pretrained_state_dict(self.spec.model, self.spec.init_weights))
            except ValueError as e:
                raise RunFailed(str(e)) from None
            new = f" ({', '.join(fresh)} new)" if fresh else ""
            tqdm.write(f"{self.config['run']}: started from {self.spec.init_weights}{new}")

    def resume(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.generator.set_state(state["rng"]["data"])
        self.p = p = Progress(**{f.name: state[f.name] for f in fields(Progress) if f.name in state})
        p.perm = None if p.perm is None else p.perm.to(self.device)
        if state["sums"] is not None:  # an interval without its row yet; summed over the processes: rank 0 has it
            sums = state["sums"] if self.main else torch.zeros_like(state["sums"])
            steps = state.get("row_steps", state["pos"])  # older checkpoints: a row per epoch
            self.meter = recipe.Meter(self.device, self.spec.batch_size, sums, steps, state["train_seconds"])
        if self.main:
            metrics.truncate_rows(self.run_dir / "metrics.csv", p.csv_rows)
            note = rundir.record_resumption(self.run_dir, self.config, p.iteration)
            if note:
                tqdm.write(f"{self.config['run']}: {note}")
        # the bar starts where the run stands: its rate and time left count the steps trained since the resume
        self.bar.n = self.bar.last_print_n = self.bar.initial = p.iteration
        self.bar.refresh()
        tqdm.write(f"{self.config['run']}: resuming at iteration {p.iteration} (epoch {p.epoch + 1})")

    def steps(self):
        """SGD steps until the epoch ends, a row is due, the run ends or a stop is asked; True if a stop was."""
        spec, p = self.spec, self.p
        if p.perm is None:
            p.perm, p.pos = torch.randperm(len(self.dataset.train), device=self.device, generator=self.generator), 0
        plan = EpochPlan(
            p.perm, p.pos, spec.batch_size, self.dataset.mean, self.generator, spec.seed, p.epoch, self.device, *world()
        )
        batches = self.dataset.train.train_batches(plan)
        batches, start, window = recipe.data_errors(batches), time.perf_counter(), self.meter.snapshot()
        stopped = False
        while p.pos < self.per_epoch and p.iteration < spec.iterations and not stopped:
            lr = recipe.lr_at(p.iteration, spec, p.warmup_end, p.lr_drops)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, labels = next(batches)
            loss, errors = recipe.train_step(self.forward, self.optimizer, x, labels, spec, self.device)
            self.meter.add(loss, errors)
            self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), p.iteration, self.first_bad)
            p.iteration, p.pos = p.iteration + 1, p.pos + 1
            self.bar.update(1)  # host-side only; the numbers in the postfix wait for SYNC_EVERY
            if spec.warmup_lr > 0 and p.warmup_end is None and p.iteration % WARMUP_CHECK == 0:
                window = self.check_warmup(window)  # a sync
            if p.iteration % SYNC_EVERY == 0:
                self.show(lr, time.perf_counter() - start)  # a sync
            stopped = self.stopping()
            if spec.log_every and p.iteration % spec.log_every == 0:
                break
        self.check_finite()  # a sync: the interval's training time is complete here
        self.meter.seconds += time.perf_counter() - start
        if p.pos == self.per_epoch:
            p.epoch, p.perm, p.pos = p.epoch + 1, None, 0
        return stopped

    def row_due(self):
        """A row per epoch (log_every = 0) or every log_every iterations, and one at the end."""
        p, every = self.p, self.spec.log_every
        due = p.iteration == self.spec.iterations or (p.iteration % every == 0 if every else p.perm is None)
        return due and self.meter.steps > 0

    def take_threads(self):
        """Train on the CPU threads asked for since the last row, if any (devices.ask_threads), and record it."""
        threads = devices.threads_asked()
        if not threads or threads == torch.get_num_threads() or self.device.type != "cpu":
            return
        torch.set_num_threads(threads)
        if self.main:
            rundir.record_threads(self.run_dir, self.p.iteration, threads)
        tqdm.write(
            f"{self.config['run']}: {threads} CPU threads from iteration {self.p.iteration} on (a run beside it "
            "ended); not bitwise the same as an unbroken run from here on (recorded in config.json)"
        )

    def check_warmup(self, window):
        """End the warm-up (ResNet-110) once the training error since the last check is below warmup_until_err."""
        sums, steps = window
        err = recipe.percent(
            all_sum(self.meter.sums[1] - sums[1]).item(), (self.meter.steps - steps) * self.spec.batch_size
        )
        if err < self.spec.warmup_until_err:
            self.p.warmup_end = self.p.iteration
            tqdm.write(
                f"{self.config['run']}: warm-up ended at iteration {self.p.iteration} (training error {err:.1f}%)"
            )
        return self.meter.snapshot()

    def show(self, lr, seconds):
        self.check_finite()  # a sync anyway
        loss, err = self.meter.read()
        ips = self.meter.steps * self.spec.batch_size / (self.meter.seconds + seconds)
        self.bar.set_postfix_str(f"lr={lr:.3g} loss={loss:.3f} err={err:.1f}% img/s={ips:.0f}")

    def stopping(self):
        """Whether a SIGINT/SIGTERM asks to stop. Under torchrun the processes agree every SYNC_EVERY iterations
        (a collective), so all stop at one step."""
        if not self.distributed:
            return self.stop["signal"] is not None
        if self.p.iteration % SYNC_EVERY:
            return False
        return bool(all_sum(torch.tensor(int(self.stop["signal"] is not None), device=self.device)))

    def check_finite(self):
        bad = first_set(self.first_bad)  # the earliest over the processes
        if bad >= 0:
            lr = recipe.lr_at(bad, self.spec, self.p.warmup_end, self.p.lr_drops)
            raise RunFailed(
                f"non-finite loss at iteration {bad} (lr {lr:g}); stopped, the last good checkpoint is kept"
            )

    def write_row(self):
        """Test, then append the CSV row of the interval since the last one; the meter starts over."""
        spec, p, config = self.spec, self.p, self.config
        train_loss, train_err = self.meter.read()
        eval_start = time.perf_counter()
        ips = self.meter.images_per_second()  # training alone, before the test pass
        test_loss, test_err, _ = self.test()
        p.best_test_err = min(p.best_test_err, test_err)
        p.csv_rows += 1
        row = {
            "experiment": config["experiment"],
            "run": config["run"],
            "model": spec.model,
            "depth": config["depth"],
            "residual": config["residual"],
            "iteration": p.iteration,
            "lr": f"{recipe.lr_at(p.iteration - 1, spec, p.warmup_end, p.lr_drops):.6g}",
            "epoch": round(p.iteration * spec.batch_size / len(self.dataset.train), 3)
            if spec.log_every
            else p.csv_rows,
            "train_loss": f"{train_loss:.6g}",
            "train_err": f"{train_err:.4f}",
            "test_loss": f"{test_loss:.6g}",
            "test_err": f"{test_err:.4f}",
            "epoch_seconds": f"{self.meter.seconds + time.perf_counter() - eval_start:.3f}",
            "images_per_second": f"{ips:.1f}",
        }
        if self.main:
            metrics.append_row(self.run_dir / "metrics.csv", row)
        self.meter = recipe.Meter(self.device, spec.batch_size)
        self.bar.set_postfix_str(f"row {p.csv_rows}: train err {train_err:.1f}%, test err {test_err:.2f}%")
        if self.main and self.bar.disable:  # no bar (a child of --jobs, Slurm, --no-progress): its log says each row
            tqdm.write(
                f"{config['run']}: row {p.csv_rows}, iteration {p.iteration:,} of {spec.iterations:,}: train err "
                f"{train_err:.2f}%, test err {test_err:.2f}%, {ips:.0f} images/s"
            )
        self.watch_plateau({"train_err": train_err, "test_err": test_err}[spec.plateau_on])

    def watch_plateau(self, err):
        """schedule = "plateau": let the lr fall from here if the watched error has stalled (recipe.plateau_fell);
        not during a warm-up, nor after the last iteration. Every process decides alike on the same summed error."""
        spec, p = self.spec, self.p
        warming = spec.warmup_lr > 0 and p.warmup_end is None
        if spec.schedule != "plateau" or warming or p.iteration >= spec.iterations:
            return
        best = p.plateau_best
        p.plateau_best, p.plateau_stalled, fell = recipe.plateau_fell(spec, err, best, p.plateau_stalled, p.lr_drops)
        if fell:
            old = recipe.lr_at(p.iteration - 1, spec, p.warmup_end, p.lr_drops)
            p.lr_drops.append(p.iteration)
            new = recipe.lr_at(p.iteration, spec, p.warmup_end, p.lr_drops)
            tqdm.write(
                f"{self.config['run']}: lr {old:g} -> {new:g} from iteration {p.iteration}: "
                f"{spec.plateau_on} {err:.2f}% not {spec.plateau_delta:g} points below {best:.2f}% for "
                f"{spec.plateau_patience} rows"
            )

    def test(self, views=1):
        if self.distributed:
            rank0_buffers(self.model)
        model = self.model if self.distributed else self.forward
        return recipe.evaluate(model, self.dataset.test, self.dataset.mean, self.spec, self.device, views)

    def save_checkpoint(self):
        p, meter = self.p, self.meter
        sums = all_sum(meter.sums.clone()).cpu() if meter.steps else None  # a collective: before the rank check
        if not self.main:
            return
        rng = {
            "torch": torch.get_rng_state(),
            "data": self.generator.get_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        files.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                **vars(p),
                "perm": None if p.perm is None else p.perm.cpu(),
                "sums": sums,
                "row_steps": meter.steps,
                "train_seconds": meter.seconds,
                "config": self.config,
                "rng": rng,
            },
            self.run_dir / "checkpoint.pt",
        )

    def interrupt(self):
        if self.meter.steps:  # steps since the last row's checkpoint
            self.save_checkpoint()
        name = self.stop["signal"] or "a signal to another process"
        raise Interrupted(
            f"{name} at iteration {self.p.iteration}; checkpoint written. Continue with the same command plus "
            "--resume.",
            self.stop["signal"] or "SIGINT",
        )

    def finish(self):
        """The 10-crop test if the spec asks for it (Table 2), then final.pt."""
        if self.spec.ten_crop:
            tqdm.write(f"{self.config['run']}: 10-crop test on {len(self.dataset.test):,} images")
            test_loss, top1, top5 = self.test(views=10)
            if self.main:
                evaluation = {
                    "views": 10,
                    "iteration": self.p.iteration,
                    "images": len(self.dataset.test),
                    "test_loss": round(test_loss, 6),
                    "top1_err": round(top1, 4),
                    "top5_err": round(top5, 4),
                }
                rundir.write_json(evaluation, self.run_dir / "evaluation.json")
        if self.main:
            # the mean travels with the weights: evaluating them needs no training data
            final = {"model": self.model.state_dict(), "config": self.config, "mean": self.dataset.mean.cpu()}
            files.save(final, self.run_dir / "final.pt")
