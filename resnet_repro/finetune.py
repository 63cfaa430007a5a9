"""python -m resnet_repro.finetune: fine-tune pretrained weights on an ImageFolder dataset.

The recipe is experiments/finetune.toml; the training, CSV logging, checkpoints and --resume are the
engine's, so results land in results/finetune/<model>/ like any run.
"""

import argparse
import sys
from dataclasses import replace

from resnet_repro import config as cfg
from resnet_repro import files, models, run

EPILOG = """\
examples:
  uv run python -m resnet_repro.finetune --model resnet34 --weights torchvision --data drawings/
      ImageNet weights from the torch cache (downloaded if absent and reachable), a new 10-way fc
  uv run python -m resnet_repro.finetune --model resnet20 --weights results/degradation/resnet20/final.pt \\
      --data mini --image-size 32
      from one of our own runs
  uv run python -m resnet_repro.finetune --data drawings/ --iterations 500 --set lr=0.005 --resume

--data is an ImageFolder directory with train/ and test/ (one folder per class) or a .tar.gz of one;
images are resized to --image-size when decoded. Any run option (--out, --device, --set, --resume,
--overwrite, ...) works as in python -m resnet_repro.run.
"""


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m resnet_repro.finetune",
        epilog=EPILOG,
        description="Fine-tune pretrained weights on an ImageFolder dataset, logged like every run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default="resnet34", help="e.g. resnet18, resnet34, resnet50, resnet20 (default: resnet34)"
    )
    p.add_argument(
        "--weights",
        default="torchvision",
        help="'torchvision' (ImageNet weights) or a weights file (default: torchvision)",
    )
    p.add_argument(
        "--data", required=True, help="an ImageFolder directory with train/ and test/, a .tar.gz of one, or mini"
    )
    p.add_argument("--image-size", type=int, default=224, help="resize images to this when decoding (default: 224)")
    ours, rest = p.parse_known_args(argv)
    try:  # weights that cannot be read or do not fit: said before any data is loaded or run directory made
        models.load_pretrained(models.build_model(ours.model), models.pretrained_state_dict(ours.model, ours.weights))
    except ValueError as e:
        p.exit(2, f"error: {e}\n")

    def make_experiment(args):
        overrides = run.overrides_from(args) | {
            "model": ours.model,
            "init_weights": ours.weights,
            "image_size": ours.image_size,
        }
        exp = cfg.load_experiment("finetune", quick=args.quick, overrides=overrides)
        spec = next(iter(exp.runs.values()))
        return replace(exp, runs={ours.model: spec})  # the run is named after its model

    return run.main(["finetune", "--data", ours.data, "--no-figures", *rest], make_experiment)


if __name__ == "__main__":
    files.utf8_console()
    sys.exit(main())
