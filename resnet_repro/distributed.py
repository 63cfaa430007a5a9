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
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), world_size, device


def finish():
    if dist.is_initialized():
        dist.destroy_process_group()
