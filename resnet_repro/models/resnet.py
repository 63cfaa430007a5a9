"""The paper's plain and residual networks.

Two families, one `ResNet` class:
- CIFAR (Section 4.2): a 3x3 conv of 16 filters, three stages of n basic blocks on 32/16/8 maps with
  16/32/64 filters, global average pool, fc. Depth 6n+2: plain20/resnet20, ..., resnet1202.
- ImageNet (Table 1): 7x7 stem and max pool, four stages of basic (18/34) or bottleneck (50/101/152)
  blocks. Attribute names are torchvision's, so torchvision's state dicts load strictly.

A plain net is its residual twin without the additions (and without shortcut modules).
Shortcuts where the shape changes: "A" zero-pads channels (no parameters), "B" projects with a
1x1 conv, "C" projects in every block.

Every conv is followed by its own named BN module (`bn1`, `bn2`, `bn3`); the output of a BN that
follows a 3x3 conv is the "layer response" of Fig. 7 (after BN, before the ReLU or the addition).
`response_points(model)` lists those names in network order.
"""

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

SHORTCUTS = ("A", "B", "C")
STEMS = ("cifar", "imagenet")
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)  # the paper's; any other 6n+2 builds too
IMAGENET_LAYERS = {  # depth -> (block, blocks per stage), Table 1
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A: subsample by `stride`, then zero-pad the new channels, half before and half after.

    This is the layout of the widely used CIFAR ResNet re-implementations, so their weights map onto ours.
    """

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.stride = stride
        self.pad_before = (out_planes - in_planes) // 2
        self.pad_after = out_planes - in_planes - self.pad_before

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self):
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


def make_shortcut(shortcut, in_planes, out_planes, stride):
    """The shortcut module of one block, or None for an identity."""
    changes = stride != 1 or in_planes != out_planes
    if shortcut == "A":
        return PadShortcut(in_planes, out_planes, stride) if changes else None
    if shortcut == "B" and not changes:
        return None
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convs; with `residual`, the input (through `downsample`) is added before the last ReLU."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, residual=True, shortcut="A"):
        super().__init__()
        self.residual = residual
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride) if residual else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4). The stride sits on the 3x3 conv, as in torchvision (its "v1.5");
    the paper puts it on the first 1x1 conv."""

    expansion = 4

    def __init__(self, in_planes, planes, stride=1, residual=True, shortcut="B"):
        super().__init__()
        self.residual = residual
        width = planes
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        out_planes = planes * self.expansion
        self.downsample = make_shortcut(shortcut, in_planes, out_planes, stride) if residual else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Stem, `len(layers)` stages (`layer1`, `layer2`, ...), global average pool, fc.

    layers: blocks per stage; widths: planes per stage (the first stage has stride 1, the others 2).
    stem "cifar": 3x3 conv stride 1, no max pool; "imagenet": 7x7 conv stride 2 and 3x3 max pool.
    """

    def __init__(self, block, layers, widths, num_classes=10, residual=True, shortcut="A", stem="cifar"):
        super().__init__()
        assert len(layers) == len(widths), (layers, widths)
        assert shortcut in SHORTCUTS and stem in STEMS, (shortcut, stem)
        self.residual, self.shortcut, self.stem = residual, shortcut, stem
        self.in_planes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, self.in_planes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(3, self.in_planes)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        for i, (blocks, planes) in enumerate(zip(layers, widths)):
            stage = self._make_stage(block, planes, blocks, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

        # He et al. init, as the paper and torchvision; the fc keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_stage(self, block, planes, blocks, stride):
        # The stride (and any change of width) goes to the first block of the stage.
        stage = []
        for i in range(blocks):
            stage.append(block(self.in_planes, planes, stride if i == 0 else 1, self.residual, self.shortcut))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


MAX_CIFAR_DEPTH = 6 * 1000 + 2  # 5x the paper's deepest (1202): deeper nets only exhaust memory


def parse_name(name):
    """'resnet56' -> ('resnet', 56); raises ValueError naming the valid choices."""
    m = re.fullmatch(r"(plain|resnet)(\d{1,6})", str(name))
    depth = int(m.group(2)) if m else 0
    if m and (depth in IMAGENET_LAYERS or (8 <= depth <= MAX_CIFAR_DEPTH and (depth - 2) % 6 == 0)):
        return m.group(1), depth
    raise ValueError(
        f"unknown model {name!r}: valid names are plain<depth> or resnet<depth>, with depth 6n+2 "
        f"(n >= 1, at most {MAX_CIFAR_DEPTH:,}) for the CIFAR family (the paper's: "
        f"{', '.join(map(str, CIFAR_DEPTHS))}) or one of "
        f"{', '.join(map(str, IMAGENET_LAYERS))} for the ImageNet family; e.g. {', '.join(available()[:3])}, ..."
    )


def is_imagenet_family(name):
    return parse_name(name)[1] in IMAGENET_LAYERS


def build_model(name, num_classes=10, shortcut=None, stem=None):
    """Build `plain<depth>` or `resnet<depth>`.

    CIFAR family (depth 6n+2 other than 50 and 152): shortcut "A" by default; stem is "cifar" only.
    ImageNet family (18, 34, 50, 101, 152): shortcut "B" and stem "imagenet" by default;
    stem="cifar" gives the 3x3 stride-1 stem without max pool used for CIFAR-sized inputs.
    """
    kind, depth = parse_name(name)
    imagenet = depth in IMAGENET_LAYERS
    shortcut, stem = resolve(name, shortcut, stem)
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {shortcut!r}: valid choices are {', '.join(SHORTCUTS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}: valid choices are {', '.join(STEMS)}")
    residual = kind == "resnet"
    if imagenet:
        block, layers = IMAGENET_LAYERS[depth]
        return ResNet(BLOCKS[block], layers, (64, 128, 256, 512), num_classes, residual, shortcut, stem)
    if stem != "cifar":
        raise ValueError(f"{name} is a CIFAR-family net: its stem is 'cifar' only, not {stem!r}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), num_classes, residual, shortcut, stem)


def resolve(name, shortcut=None, stem=None):
    """(shortcut, stem) of `name` with the family's defaults for the ones not given: "A" and "cifar" for the
    CIFAR family, "B" and "imagenet" for 18..152."""
    imagenet = is_imagenet_family(name)
    return shortcut or ("B" if imagenet else "A"), stem or ("imagenet" if imagenet else "cifar")


def available():
    """The named nets of the paper, CIFAR family first."""
    depths = list(CIFAR_DEPTHS) + list(IMAGENET_LAYERS)
    return [f"{kind}{d}" for d in depths for kind in ("plain", "resnet")]


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def weighted_layers(model):
    """Convs and fcs on the main path, the paper's depth (shortcut projections are not counted)."""
    return sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) and ".downsample." not in f".{name}." for name, m in model.named_modules()
    )


def response_points(model):
    """Names of the BN modules that follow a 3x3 conv, in network order: Fig. 7's layer responses."""
    names, last_conv = [], None
    for name, m in model.named_modules():
        if ".downsample" in f".{name}":
            continue
        if isinstance(m, nn.Conv2d):
            last_conv = m
        elif isinstance(m, nn.BatchNorm2d) and last_conv is not None and last_conv.kernel_size == (3, 3):
            names.append(name)
    return names


def input_size(name):
    return 224 if is_imagenet_family(name) else 32


def multiply_adds(model, size):
    """Multiply-adds of one forward pass of a 3 x size x size image, counted by PyTorch's FLOP counter
    (convolutions and matrix products; a multiply-add is 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    return counter.get_total_flops() // 2
