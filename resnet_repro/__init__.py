"""resnet-repro: the plain-vs-residual experiments of He et al. (2015), trained, drawn and checked.

The layers, each a subpackage: `models` (the networks and their weights), `data` (the datasets and their two
loaders), `engine` (one run: the loop, its recipe, its directory and CSV), `launch` (an experiment's runs, here
or on Slurm), `analysis` (the runs as a frame, the paper's figures, tables and claims). `config` turns
experiments/*.toml into the resolved spec every run receives. Commands: `python -m resnet_repro.run`,
`.analysis`, `.finetune`, `.bench`, `.models`.

The names below are the public API; they are imported on first use, so a training process never loads
matplotlib or pandas:

    from resnet_repro import load_experiment, build_model, load_runs, final_metrics
"""

import importlib

_API = {
    "TrainSpec": "resnet_repro.config",
    "SpecError": "resnet_repro.config",
    "load_experiment": "resnet_repro.config",
    "build_model": "resnet_repro.models",
    "parse_name": "resnet_repro.models",
    "read_weights": "resnet_repro.models",
    "load_for": "resnet_repro.data",
    "DataError": "resnet_repro.data",
    "train": "resnet_repro.engine.train",
    "load_runs": "resnet_repro.analysis",
    "final_metrics": "resnet_repro.analysis",
    "seed_summary": "resnet_repro.analysis",
    "compare": "resnet_repro.analysis",
    "claims_table": "resnet_repro.analysis",
    "draw": "resnet_repro.analysis",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'resnet_repro' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
