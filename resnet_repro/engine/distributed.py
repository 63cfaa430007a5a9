"""torchrun support: `torchrun --nproc_per_node=N -m resnet_repro.run EXPERIMENT`.

Each process trains a disjoint shard of every global batch (the batch size stays the spec's), gradients
are averaged by DistributedDataParallel, and only rank 0 writes the CSV, checkpoints and figures.
NCCL on GPUs (one per process, by LOCAL_RANK), gloo on CPU.
"""

import os

import torch
import torch.distributed as dist


def init():
    """(rank, world size, this process's device); (0, 1, None) when not started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size(), None) if dist.is_initialized() else (0, 1, None)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # DistributedDataParallel imports torch._dynamo; imported after the process group exists, it keeps references
    # to it, so destroy_process_group cannot stop gloo's worker threads, and one of them freeing a tensor after
    # Python has begun to exit aborts the process ("terminate called without an active exception")
    import torch._dynamo  # noqa: F401

    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), world_size, device


def finish():
    """Destroy the process group while Python is fully alive: its worker threads stop here, not at exit."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world():
    """(rank, world size): (0, 1) unless torchrun started a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_sum(t):
    """Sum a tensor over the processes (in place); the tensor itself without a process group."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def peer_lost(error):
    """Whether `error`, raised inside a collective, says another process of the job is gone (it failed or was
    killed): gloo finds the connection closed, NCCL raises a DistBackendError."""
    text = str(error)
    return dist.is_initialized() and (
        isinstance(error, dist.DistBackendError) or "closed by peer" in text or "reset by peer" in text
    )


def first_set(index):
    """The smallest non-negative value of an int64 scalar over the processes (-1 if none has one)."""
    if not dist.is_initialized():
        return int(index)
    none = torch.iinfo(torch.int64).max
    t = torch.where(index < 0, none, index)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return -1 if int(t) == none else int(t)


def from_rank0(obj):
    """Rank 0's `obj` on every process (a picklable object)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_buffers(model):
    """Each process's steps moved its own BN running statistics: give every process rank 0's, the ones
    saved, before evaluating."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def barrier():
    if dist.is_initialized():
        dist.barrier()
