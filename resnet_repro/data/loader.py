"""The one interface both loaders serve: a Dataset's `train` and `test` are BatchSources, whatever the loader,
"memory" (resnet_repro.data.memory: decoded once, resident on the device, CIFAR's pad-crop-flip) or "stream"
(resnet_repro.data.stream: JPEGs decoded per batch by DataLoader workers, the paper's ImageNet augmentation).
The engine asks a BatchSource for an epoch's batches with an EpochPlan."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class EpochPlan:
    """The training batches a process asks for: one epoch's, from batch `start` of the order `perm`."""

    perm: torch.Tensor  # the epoch's order of the training images
    start: int  # the first batch (a resumed epoch starts mid-way)
    batch_size: int  # the global batch; under torchrun each process gets its shard
    mean: torch.Tensor  # the per-pixel mean subtracted from every image
    generator: torch.Generator | None  # memory: the on-device augmentation draws
    seed: int  # stream: each image's draws are seeded by (seed, epoch, index), whatever the workers
    epoch: int
    device: torch.device | str = "cpu"
    rank: int = 0
    world_size: int = 1


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def train_batches(self, plan: EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The plan's batches as (normalized augmented float images, labels): this process's shard of each."""

    def eval_batches(
        self, mean, batch_size, device, rank=0, world_size=1, views=1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's shard of the split in order, as (normalized float images, labels); views=10:
        AlexNet's 10 crops, (B, 10, 3, H, W) (stream splits only)."""

    def sample(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels) of the given indices on the CPU, as the test sees them."""
