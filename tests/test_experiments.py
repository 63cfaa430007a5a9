import pytest
import torch

from resnet_repro import config, models


def test_degradation18_34_is_fig4s_cifar_variant():
    exp = config.load_experiment("degradation18_34")
    assert list(exp.runs) == ["plain18", "plain34", "resnet18", "resnet34"]
    for spec in exp.runs.values():
        assert (spec.stem, spec.shortcut, spec.data) == ("cifar", "A", "cifar10")
        assert (spec.batch_size, spec.lr, spec.iterations, spec.milestones) == (128, 0.1, 64000, (32000, 48000))
    quick = config.load_experiment("degradation18_34", quick=True)
    assert {(s.data, s.iterations, s.stem) for s in quick.runs.values()} == {("mini", 40, "cifar")}


@pytest.mark.parametrize("run", ["plain18", "plain34", "resnet18", "resnet34"])
def test_degradation18_34_nets_take_cifar_images(run):
    spec = config.load_experiment("degradation18_34").runs[run]
    model = models.build_model(spec.model, 10, spec.shortcut, spec.stem).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar100_uses_cifar100_and_quick_the_mini_cifar10():
    exp = config.load_experiment("cifar100")
    assert list(exp.runs) == ["plain20", "plain56", "resnet20", "resnet56"]
    assert {s.data for s in exp.runs.values()} == {"cifar100"}
    quick = config.load_experiment("cifar100", quick=True)
    assert {(s.data, s.iterations) for s in quick.runs.values()} == {("mini", 100)}


def test_imagenet18_34_is_the_papers_imagenet_recipe():
    exp = config.load_experiment("imagenet18_34")
    assert list(exp.runs) == ["plain18", "plain34", "resnet18", "resnet34"]
    for spec in exp.runs.values():
        assert (spec.stem, spec.shortcut, spec.loader, spec.image_size, spec.scale, spec.test_resize) == (
            "imagenet",
            "A",
            "stream",
            224,
            (256, 480),
            256,
        )
        assert (spec.batch_size, spec.lr, spec.weight_decay, spec.iterations, spec.lighting, spec.ten_crop) == (
            256,
            0.1,
            1e-4,
            600000,
            0.1,
            True,
        )
    quick = config.load_experiment("imagenet18_34", quick=True)
    assert {(s.data, s.loader, s.image_size, s.scale, s.test_resize, s.iterations) for s in quick.runs.values()} == {
        ("mini", "stream", 32, (36, 68), 36, 40)
    }


def test_imagenet18_34_nets_take_its_crops():
    spec = config.load_experiment("imagenet18_34").runs["plain34"]
    model = models.build_model(spec.model, 1000, spec.shortcut, spec.stem).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert models.num_params(model) == models.num_params(models.build_model("resnet34", 1000, "A", "imagenet"))


def test_degradation_quick_is_the_measured_demo_recipe():
    quick = config.load_experiment("degradation", quick=True)
    assert list(quick.runs) == ["plain20", "plain56", "resnet20", "resnet56"]
    for spec in quick.runs.values():
        assert (spec.data, spec.train_size, spec.batch_size, spec.iterations) == ("mini", 1000, 32, 600)
        assert (spec.schedule, spec.ramp, spec.log_every, spec.lr, spec.momentum, spec.weight_decay) == (
            "linear",
            120,
            60,
            0.1,
            0.9,
            1e-4,
        )


def test_depth_is_fig6_and_table6_with_the_resnet110_warmup():
    exp = config.load_experiment("depth")
    depths = [20, 32, 44, 56, 110]
    assert list(exp.runs) == [f"plain{d}" for d in depths] + [f"resnet{d}" for d in depths]
    for run, spec in exp.runs.items():
        assert (spec.data, spec.batch_size, spec.lr, spec.iterations, spec.milestones) == (
            "cifar10",
            128,
            0.1,
            64000,
            (32000, 48000),
        )
        assert spec.warmup_lr == (0.01 if run == "resnet110" else 0.0)
    quick = config.load_experiment("depth", quick=True)  # the depths that fit the CPU demo
    assert list(quick.runs) == ["plain20", "plain32", "plain44", "resnet20", "resnet32", "resnet44"]
    assert {(s.data, s.train_size, s.iterations, s.log_every) for s in quick.runs.values()} == {("mini", 1000, 450, 45)}
    assert list(config.load_experiment("depth", quick=True, runs=["resnet110"]).runs) == [
        "resnet110"
    ]  # --runs still picks any


def test_resnet1202_is_its_own_experiment():
    spec = config.load_experiment("resnet1202").runs["resnet1202"]
    assert (spec.iterations, spec.milestones, spec.warmup_lr, spec.batch_size) == (64000, (32000, 48000), 0.01, 128)
    assert models.num_params(models.build_model("resnet1202")) == pytest.approx(19.4e6, rel=0.01)
    quick = config.load_experiment("resnet1202", quick=True).runs["resnet1202"]
    assert (quick.data, quick.batch_size, quick.iterations) == ("mini", 8, 4)


def test_constant_lr_is_degradations_quick_data_with_lr_0_1_throughout():
    from resnet_repro.recipe import lr_at

    spec = config.load_experiment("constant_lr", quick=True).runs["resnet56"]
    demo = config.load_experiment("degradation", quick=True).runs["resnet56"]
    assert (spec.data, spec.train_size, spec.batch_size) == (demo.data, demo.train_size, demo.batch_size)
    assert {lr_at(it, spec) for it in range(spec.iterations)} == {0.1}
    assert lr_at(0, demo) < 0.1  # the demo ramps
