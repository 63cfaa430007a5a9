"""Weights to start from or evaluate: torchvision's ImageNet weights, our own final.pt and checkpoints, and the
common PyTorch CIFAR re-implementations' checkpoints, read as tensors only (never code) into our names."""

from pathlib import Path

import torch

from resnet_repro.files import fetch_weights, load_tensors
from resnet_repro.models.resnet import IMAGENET_LAYERS, parse_name


def convert_cifar_state_dict(state_dict):
    """Map a state dict of the common PyTorch CIFAR ResNet re-implementations (option A, `linear` head,
    possibly saved from DataParallel with a `module.` prefix) onto our names."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        out["fc." + key.removeprefix("linear.") if key.startswith("linear.") else key] = value
    return out


def pretrained_state_dict(name, source):
    """Weights to start from: source "torchvision" (ImageNet weights of resnet18..152, from the local torch
    cache, downloaded if absent and reachable), or a path or URL of a state dict, a torchvision .pth, our
    final.pt or a checkpoint of the common CIFAR re-implementations; read as tensors only, a hash in the file
    name checked. Raises ValueError with what to do."""
    if source == "torchvision":
        import torchvision

        kind, depth = parse_name(name)
        if kind != "resnet" or depth not in IMAGENET_LAYERS:
            raise ValueError(f"torchvision has pretrained weights for resnet18/34/50/101/152 only, not {name}")
        url = torchvision.models.get_model_weights(f"resnet{depth}").DEFAULT.url
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        try:
            path = fetch_weights(url, cache)  # the torch cache, its file's hash checked like a download
        except ValueError as e:
            raise ValueError(
                f"torchvision's {name} weights: {e}. Offline, put {url} into {cache}/, or pass a weights file."
            ) from None
    else:
        path = fetch_weights(source, Path(torch.hub.get_dir()) / "checkpoints")
    if not path.is_file():
        raise ValueError(f"weights file {path} not found; pass a file, a URL or 'torchvision'")
    return read_weights(path)[0]


def read_weights(path):
    """(state dict in our parameter names, the run's config or None, the per-pixel mean its inputs were
    normalized by or None) of a weights file: our final.pt or checkpoint.pt ({"model", "config", "mean"}), a
    torchvision-layout state dict, or a checkpoint of the common CIFAR re-implementations ({"state_dict", ...}).
    Read as tensors and plain data only, never code; ValueError in one line for anything else."""
    obj = load_tensors(path)  # NotLoadable (a ValueError) for a file that is not plain weights
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    config = obj.get("config") if isinstance(obj.get("config"), dict) else None
    if config is not None and not isinstance(config.get("model"), str):
        raise ValueError(f"{path}: its config names no model (damaged, or not written by this suite)")
    state = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors in it (keys: {', '.join(map(str, list(obj)[:6]))})")
    mean = obj.get("mean") if config and isinstance(obj.get("mean"), torch.Tensor) else None
    return convert_cifar_state_dict(state), config, mean


def load_pretrained(model, state_dict):
    """Load `state_dict` into `model`; a classifier (fc) of another class count is left freshly
    initialised, as fine-tuning needs. Raises ValueError naming keys that do not fit."""
    own = model.state_dict()
    state = {k: v for k, v in state_dict.items() if not (k.startswith("fc.") and k in own and v.shape != own[k].shape)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
    if wrong:
        raise ValueError(
            f"the weights do not fit {type(model).__name__}: {', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}"
        )
    return [k for k in missing]  # the keys left as initialised (the fc, when replaced)
