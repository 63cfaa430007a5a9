"""The data layer: what a run trains and tests on.

- `loader`: the BatchSource interface both loaders serve, the EpochPlan a training process asks for, and
  `load_for(spec)`, the one place that picks a loader.
- `memory`: CIFAR-sized data decoded once and resident on the device, augmented there in batches.
- `stream`: JPEG folders decoded per batch by DataLoader workers (the ImageNet nets).
- `sources`: what both share: the Dataset they return, where a --data source is and its public name, archive
  checksums and caches, the per-pixel mean subtraction.
"""

from resnet_repro.data.loader import BatchSource, EpochPlan, data_key, load_for
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
