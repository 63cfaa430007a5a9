"""The data layer: what a run trains and tests on.

- `load_for(spec)` (here): the one place that picks a loader; `data_key(spec)`: runs with equal keys share a load.
- `loader`: the BatchSource interface both loaders serve, and the EpochPlan a training process asks for.
- `memory`: CIFAR-sized data decoded once and resident on the device, augmented there in batches.
- `stream`: JPEG folders decoded per batch by DataLoader workers (the ImageNet nets).
- `sources`: what both share: the Dataset they return, where a --data source is and its public name, archive
  checksums and caches, the per-pixel mean subtraction.
"""

from resnet_repro.data.loader import BatchSource, EpochPlan
from resnet_repro.data.sources import KNOWN_DATASETS, DataError, Dataset, dataset_name, local_path, normalize

__all__ = [
    "KNOWN_DATASETS",
    "BatchSource",
    "DataError",
    "Dataset",
    "EpochPlan",
    "data_key",
    "dataset_name",
    "load_for",
    "local_path",
    "normalize",
]

# the TrainSpec fields that decide what a run's dataset holds (see data_key)
DATA_FIELDS = ("data", "loader", "val_size", "train_size", "image_size", "resize", "scale", "test_resize", "lighting")


def data_key(spec):
    """What decides a run's dataset: runs with equal keys share one load (see load_for)."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in (getattr(spec, f) for f in DATA_FIELDS))


def load_for(spec, data_dir="data", device="cpu", workers=0):
    """The Dataset a TrainSpec asks for, on `device`: resnet_repro.data.memory's for loader = "memory",
    resnet_repro.data.stream's for "stream" (decoded by `workers` DataLoader processes)."""
    if spec.loader == "stream":
        from resnet_repro.data import stream

        return stream.load(
            spec.data, data_dir, device, spec.image_size, spec.test_resize, spec.scale, spec.lighting, workers
        )
    from resnet_repro.data import memory

    return memory.load(spec.data, data_dir, device, spec.val_size, spec.image_size, spec.resize, spec.train_size)
