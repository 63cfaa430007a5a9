"""python -m resnet_repro.models: layers, parameters and multiply-adds of the paper's networks."""

import argparse

from resnet_repro.models.resnet import (
    available,
    build_model,
    input_size,
    is_imagenet_family,
    multiply_adds,
    num_params,
    weighted_layers,
)


def summary(names):
    """Rows of (name, weighted layers, parameters, multiply-adds per image at the native input size)."""
    rows = []
    for name in names:
        model = build_model(name, num_classes=1000 if is_imagenet_family(name) else 10)
        rows.append((name, weighted_layers(model), num_params(model), multiply_adds(model, input_size(name))))
    return rows


def _human(n):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnet_repro.models",
        description="Print layers, parameters and multiply-adds of the paper's networks "
        "(CIFAR family at 32x32 with 10 classes, ImageNet family at 224x224 with 1000 classes).",
        epilog="examples:\n  uv run python -m resnet_repro.models\n  uv run python -m resnet_repro.models resnet20 "
        "plain56 resnet34",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="e.g. resnet56 plain20 resnet74 (default: all of the paper's)"
    )
    args = parser.parse_args(argv)
    try:
        rows = summary(args.names or available())
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"{'name':<12}{'layers':>8}{'params':>14}{'mult-adds':>12}  input")
    for name, layers, params, macs in rows:
        print(f"{name:<12}{layers:>8}{params:>14,}{_human(macs):>12}  {input_size(name)}x{input_size(name)}")
