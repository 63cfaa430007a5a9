import pytest
import torch
import torchvision

from resnet_repro import models
from resnet_repro.models import build_model, num_params, summary

# Exact parameter counts; Table 6 of the paper rounds them (0.27M ... 19.4M). 10 classes unless the name says otherwise.
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


@pytest.mark.parametrize("depth", CIFAR_PARAMS)
def test_cifar_param_counts_and_plain_twins(depth):
    assert num_params(build_model(f"resnet{depth}")) == CIFAR_PARAMS[depth]
    assert num_params(build_model(f"plain{depth}")) == CIFAR_PARAMS[depth]


@pytest.mark.parametrize(
    "name,classes,expected",
    [
        ("resnet34", 10, 21_289_802),
        ("resnet50", 10, 23_528_522),
        ("resnet18", 1000, 11_689_512),
        ("resnet34", 1000, 21_797_672),
    ],
)
def test_imagenet_param_counts(name, classes, expected):
    assert num_params(build_model(name, num_classes=classes)) == expected


def test_shortcut_b_and_c_add_projections_to_cifar_nets():
    # B: a 1x1 conv + BN where the width doubles (16->32, 32->64); by hand.
    extra_b = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert num_params(build_model("resnet20", shortcut="B")) == CIFAR_PARAMS[20] + extra_b
    c = build_model("resnet20", shortcut="C")
    blocks = [b for stage in (c.layer1, c.layer2, c.layer3) for b in stage]
    assert all(isinstance(b.downsample, torch.nn.Sequential) for b in blocks)
    # A plain net has no shortcuts at all, whatever the option.
    assert num_params(build_model("plain20", shortcut="B")) == CIFAR_PARAMS[20]


@pytest.mark.parametrize("name", ["plain20", "resnet20", "resnet56", "resnet74", "plain8"])
def test_cifar_output_shape(name):
    model = build_model(name).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model(name, num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["plain18", "resnet18", "resnet34", "resnet50", "plain50"])
def test_imagenet_output_shape_both_stems(name):
    assert build_model(name, 1000).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    cifar_stem = build_model(name, 10, stem="cifar").eval()
    assert isinstance(cifar_stem.maxpool, torch.nn.Identity) and cifar_stem.conv1.kernel_size == (3, 3)
    assert cifar_stem.conv1.stride == (1, 1)
    assert cifar_stem(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", [20, 56, 18, 34])
def test_plain_is_the_residual_twin_without_additions(depth):
    torch.manual_seed(0)
    plain, res = build_model(f"plain{depth}", shortcut="A"), build_model(f"resnet{depth}", shortcut="A")
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in res.state_dict().items()}
    plain.load_state_dict(res.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(plain.eval()(x), res.eval()(x))
    # Turning the additions off in the residual net gives exactly the plain net.
    for m in res.modules():
        if hasattr(m, "residual"):
            m.residual = False
    torch.testing.assert_close(res(x), plain(x), rtol=0, atol=0)


def test_option_a_subsamples_and_pads_half_before_half_after():
    x = torch.randn(2, 16, 8, 8)
    y = models.PadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_residual_block_adds_its_shortcut():
    torch.manual_seed(0)
    block = models.BasicBlock(16, 32, stride=2, residual=True, shortcut="A").eval()
    x = torch.randn(2, 16, 8, 8)
    branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(branch + models.PadShortcut(16, 32, 2)(x)))


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_weights_load_strictly_with_equal_outputs(depth):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    # Make BN non-trivial so a misplaced layer cannot hide behind identity statistics.
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    ours = build_model(f"resnet{depth}", 1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("bad", ["resnet21", "plain7", "vgg16", "resnet", "resnet2", "ResNet20", "resnet-20"])
def test_invalid_names_raise_value_error_naming_valid_choices(bad):
    with pytest.raises(ValueError, match=r"valid names .*resnet20"):
        build_model(bad)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"shortcut": "D"}, "valid choices are A, B, C"),
        ({"stem": "tiny"}, "valid choices are cifar, imagenet"),
        ({"stem": "imagenet"}, "CIFAR-family"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("resnet20", **kwargs)


@pytest.mark.parametrize("n", [1, 3, 5, 7, 9, 12, 18])
def test_cifar_layer_count_is_6n_plus_2(n):
    for kind in ("plain", "resnet"):
        assert models.weighted_layers(build_model(f"{kind}{6 * n + 2}", shortcut="B")) == 6 * n + 2


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_layer_count(depth):
    assert models.weighted_layers(build_model(f"resnet{depth}")) == depth
    assert models.weighted_layers(build_model(f"plain{depth}")) == depth


def test_available_lists_every_paper_net_and_each_builds_by_name():
    names = models.available()
    for depth in (20, 32, 44, 56, 110, 1202, 18, 34, 50, 101, 152):
        assert f"plain{depth}" in names and f"resnet{depth}" in names
    assert len(names) == 22
    assert all(models.parse_name(n)[0] in ("plain", "resnet") for n in names)


def test_he_init_and_bn_init():
    torch.manual_seed(0)
    model = build_model("resnet56")
    w = model.layer3[1].conv1.weight  # 64 x 64 x 3 x 3, fan_out = 64 * 9
    assert abs(w.std().item() / (2 / (64 * 9)) ** 0.5 - 1) < 0.03
    assert abs(w.mean().item()) < 0.002
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_response_points_are_the_bns_after_every_3x3_conv():
    points = models.response_points(build_model("resnet20"))
    assert len(points) == 19 and points[:3] == ["bn1", "layer1.0.bn1", "layer1.0.bn2"]
    assert points[-1] == "layer3.2.bn2"
    assert models.response_points(build_model("plain56")) == models.response_points(build_model("resnet56"))
    # Bottlenecks have one 3x3 conv each; the 7x7 stem and the projections do not count.
    assert models.response_points(build_model("resnet50")) == [
        f"layer{s + 1}.{b}.bn2" for s, blocks in enumerate((3, 4, 6, 3)) for b in range(blocks)
    ]


def test_multiply_adds_match_the_papers_orders():
    assert 40e6 < models.multiply_adds(build_model("resnet20"), 32) < 42e6
    assert 124e6 < models.multiply_adds(build_model("resnet56"), 32) < 127e6
    assert 3.55e9 < models.multiply_adds(build_model("resnet34", 1000), 224) < 3.7e9


def test_common_cifar_checkpoint_layout_maps_onto_ours():
    source = build_model("resnet20")
    theirs = {
        "module." + k.replace("fc.", "linear.", 1) if k.startswith("fc.") else "module." + k: v
        for k, v in source.state_dict().items()
    }
    target = build_model("resnet20")
    target.load_state_dict(models.convert_cifar_state_dict(theirs), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_models_cli_prints_the_table(capsys):
    summary.main(["resnet20", "plain56"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "layers", "params", "mult-adds"]
    assert out[1].split()[:4] == ["resnet20", "20", "269,722", "40.55M"]
    assert out[2].split()[:4] == ["plain56", "56", "853,018", "125.49M"]


def test_models_cli_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit) as e:
        summary.main(["vgg16"])
    assert e.value.code == 2
    assert "unknown model 'vgg16'" in capsys.readouterr().err
