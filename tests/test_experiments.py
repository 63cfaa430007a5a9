"""Every experiment file against the paper's recipe, in one table: what each resolves to, run by run."""

import pytest
import torch

from resnet_repro import config, models
from resnet_repro.engine.recipe import lr_at

CIFAR = dict(batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, iterations=64_000, milestones=(32_000, 48_000))
IMAGENET = dict(
    batch_size=256,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    iterations=600_000,
    milestones=(150_000, 300_000, 450_000),
    loader="stream",
    image_size=224,
    scale=(256, 480),
    test_resize=256,
    lighting=0.1,
    ten_crop=True,
    stem="imagenet",
    shortcut="A",
)
DEPTHS = (20, 32, 44, 56, 110)
WARMUP = dict(warmup_lr=0.01, warmup_until_err=80.0)  # Section 4.2: ResNet-110 (and 1202) warm up at 0.01
# experiment: (its runs, what every run is set to (Section 4.2 for CIFAR, 3.4 for ImageNet), what one run adds)
PAPER = {
    "degradation": (["plain20", "plain56", "resnet20", "resnet56"], dict(CIFAR, data="cifar10"), {}),
    "depth": (
        [f"plain{d}" for d in DEPTHS] + [f"resnet{d}" for d in DEPTHS],
        dict(CIFAR, data="cifar10"),
        {"resnet110": WARMUP},
    ),
    "resnet1202": (["resnet1202"], dict(CIFAR, data="cifar10"), {"resnet1202": WARMUP}),
    "cifar100": (["plain20", "plain56", "resnet20", "resnet56"], dict(CIFAR, data="cifar100"), {}),
    "degradation18_34": (
        ["plain18", "plain34", "resnet18", "resnet34"],
        dict(CIFAR, data="cifar10", stem="cifar", shortcut="A"),
        {},
    ),
    "imagenet18_34": (["plain18", "plain34", "resnet18", "resnet34"], IMAGENET, {}),
}
# what --quick changes (the demos measured in docs/results.md), and the runs it keeps
QUICK = {
    "degradation": (
        None,
        dict(
            data="mini",
            train_size=1000,
            batch_size=32,
            iterations=600,
            schedule="linear",
            ramp=120,
            log_every=60,
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-4,
        ),
    ),
    "depth": (
        ["plain20", "plain32", "plain44", "resnet20", "resnet32", "resnet44"],
        dict(data="mini", train_size=1000, iterations=450, log_every=45),
    ),
    "resnet1202": (None, dict(data="mini", batch_size=8, iterations=4)),
    "cifar100": (None, dict(data="mini", iterations=100)),
    "degradation18_34": (None, dict(data="mini", iterations=40, stem="cifar")),
    "imagenet18_34": (
        None,
        dict(data="mini", loader="stream", image_size=32, scale=(36, 68), test_resize=36, iterations=40),
    ),
}


def differences(spec, expected):
    return {k: (getattr(spec, k), v) for k, v in expected.items() if getattr(spec, k) != v}


@pytest.mark.parametrize("name", PAPER)
def test_every_experiment_is_the_papers_recipe(name):
    runs, recipe, per_run = PAPER[name]
    exp = config.load_experiment(name)
    assert list(exp.runs) == runs
    for run, spec in exp.runs.items():
        assert not differences(spec, {**recipe, "warmup_lr": 0.0, **per_run.get(run, {})}), run


@pytest.mark.parametrize("name", QUICK)
def test_quick_recipes_are_the_measured_demos(name):
    runs, recipe = QUICK[name]
    quick = config.load_experiment(name, quick=True)
    assert list(quick.runs) == (runs or PAPER[name][0])
    for run, spec in quick.runs.items():
        assert not differences(spec, recipe), run


def test_quick_runs_still_take_any_run_by_name():
    assert list(config.load_experiment("depth", quick=True, runs=["resnet110"]).runs) == ["resnet110"]


@pytest.mark.parametrize("name,size,classes", [("degradation18_34", 32, 10), ("imagenet18_34", 224, 1000)])
def test_the_18_34_layer_nets_take_their_experiments_images(name, size, classes):
    for run, spec in config.load_experiment(name).runs.items():
        model = models.build_model(spec.model, classes, spec.shortcut, spec.stem).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, classes), run


def test_constant_lr_is_degradations_quick_data_with_lr_0_1_throughout():
    spec = config.load_experiment("constant_lr", quick=True).runs["resnet56"]
    demo = config.load_experiment("degradation", quick=True).runs["resnet56"]
    assert (spec.data, spec.train_size, spec.batch_size) == (demo.data, demo.train_size, demo.batch_size)
    assert {lr_at(it, spec) for it in range(spec.iterations)} == {0.1}
    assert lr_at(0, demo) < 0.1  # the demo ramps
