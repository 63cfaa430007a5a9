"""The paper's recipe as functions (Section 3.4 and 4.2): the learning rate of an iteration, the model and its
SGD optimizer, one training step, the evaluation of a split, and the meter that sums a row's training
metrics on the device. resnet_repro.engine.train runs them in a loop; resnet_repro.bench times them."""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from resnet_repro.data.sources import DataError
from resnet_repro.engine.distributed import all_sum, world
from resnet_repro.engine.rundir import RunFailed
from resnet_repro.models import build_model


def configure_torch(device, deterministic):
    """Process-wide flags, set once where a process starts training: deterministic algorithms (bitwise-repeatable
    on the CPU; slower on a GPU), else cuDNN's autotuner on a GPU (the input shape is fixed)."""
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = torch.device(device).type == "cuda" and not deterministic


def lr_at(it, spec, warmup_end=None, drops=()):
    """The learning rate of iteration `it` (0-based). warmup_end: the iteration at which the warm-up
    ended (None while it lasts; ignored without warm-up); drops: with schedule = "plateau", the iterations from
    which the lr fell (see plateau_fell)."""
    if spec.warmup_lr > 0 and (warmup_end is None or it < warmup_end):
        return spec.warmup_lr
    if spec.schedule == "linear":
        lr = spec.lr * min(1.0, (spec.iterations - it) / (spec.iterations - spec.ramp))
    else:
        falls = drops if spec.schedule == "plateau" else spec.milestones
        lr = spec.lr * spec.lr_decay ** sum(it >= m for m in falls)
    return lr * (it + 1) / spec.ramp if it < spec.ramp else lr


def plateau_fell(spec, err, best, stalled, drops):
    """The paper's ImageNet rule, "divided by 10 when the error plateaus", at one CSV row: `err` is the row's
    watched error (spec.plateau_on), `best` the lowest since the last fall, `stalled` the rows since it last fell by
    plateau_delta, `drops` the falls so far. Returns (best, stalled, fell) after this row; after a fall the watch
    starts over."""
    if len(drops) >= spec.plateau_drops:
        return best, stalled, False
    if err < best - spec.plateau_delta:
        return err, 0, False
    if stalled + 1 < spec.plateau_patience:
        return best, stalled + 1, False
    return math.inf, 0, True


def new_model(spec, num_classes):
    """The spec's model, initialised on the CPU from spec.seed, so any device starts from the same weights."""
    torch.manual_seed(spec.seed)
    return build_model(spec.model, num_classes, spec.shortcut, spec.stem)


def prepare(model, spec, device):
    """Move `model` to `device`; returns the callable that trains it (DistributedDataParallel under torchrun,
    compiled or not) and its SGD optimizer."""
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)
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
    return (torch.compile(forward) if spec.compile else forward), optimizer


def autocast(device, spec):
    device = torch.device(device)
    bf16 = spec.precision == "bf16" or (spec.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


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


def data_errors(batches):
    """A bad image met while training or testing ends the run with the data's one-line message."""
    try:
        yield from batches
    except DataError as e:
        raise RunFailed(str(e)) from None


@torch.no_grad()
def evaluate(model, split, mean, spec, device, views=1):
    """(mean loss, top-1 error %, top-5 error %) over a whole split in eval mode, one host sync at the end.
    views=10: the softmax averaged over AlexNet's 10 crops (stream splits)."""
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    rank, world_size = world()
    for x, y in data_errors(split.eval_batches(mean, spec.eval_batch_size, device, rank, world_size, views)):
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
    return loss_sum / len(split), percent(errors, len(split)), percent(errors5, len(split))


def percent(errors, n):
    return 100.0 * errors / n


class Meter:
    """The training metrics of one CSV row: the summed loss and errors on the device (added to without a host
    sync), the steps and the training seconds since the last row. Under torchrun each process sums its
    shards and `read` sums over the processes."""

    def __init__(self, device, batch, sums=None, steps=0, seconds=0.0):
        self.sums = torch.zeros(2, device=device, dtype=torch.float64) if sums is None else sums.to(device)
        self.batch, self.steps, self.seconds = batch, steps, seconds

    def add(self, loss_sum, errors):
        self.sums += torch.stack([loss_sum, errors])
        self.steps += 1

    def snapshot(self):
        return self.sums.clone(), self.steps

    def read(self):
        """(mean training loss, training error %) since the last row, over every process: a host sync."""
        loss_sum, errors = all_sum(self.sums.clone()).tolist()
        n = self.steps * self.batch
        return loss_sum / n, percent(errors, n)

    def images_per_second(self):
        return self.steps * self.batch / self.seconds
