"""The usual PyTorch training loop, the baseline that resnet_repro.bench measures the engine against.

CIFAR: torchvision.datasets.CIFAR10's per-item PIL images with RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor and Normalize; ImageNet (a folder of JPEGs): ImageFolder's PIL decode with
RandomResizedCrop. Both in DataLoader workers, fp32, eager, and `.item()` on every step for the running loss
and accuracy, as most training scripts do.
"""

import time

import torch
import torch.nn.functional as F
from PIL import Image

from resnet_repro.models import build_model


class PILArrays(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: a PIL image from a uint8 HWC array, then the
    transform."""

    def __init__(self, images, labels, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) uint8, as CIFAR10.data
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class PILFiles(torch.utils.data.Dataset):
    """What torchvision.datasets.ImageFolder does per item: PIL opens the file, then the transform."""

    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels.tolist(), transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


def usual_loader(ds, spec, workers, device):
    """The usual PyTorch loader of spec.loader's kind of data, and its Normalize."""
    from torchvision import transforms

    if spec.loader == "stream":  # the usual ImageNet loop
        normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(ds.train.crop),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        dataset = PILFiles(ds.train.files, ds.train.labels, transform)
    else:
        mean = ds.train.images.float().mean((0, 2, 3)) / 255
        std = (ds.train.images.float() / 255).std((0, 2, 3))
        normalize = transforms.Normalize(mean.tolist(), std.tolist())
        transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        dataset = PILArrays(ds.train.images.cpu(), ds.train.labels.cpu(), transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=spec.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(spec.seed),
    )
    return loader, normalize


def batches(loader):
    while True:
        yield from loader


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_usual(spec, ds, iterations, warmup, device, workers):
    """Train with the usual loop; returns (images/s over the timed iterations, (model, normalize)), the
    Normalize being what its test images need too."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, ds.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader, normalize = usual_loader(ds, spec, workers, device)
    model.train()
    running_loss, correct, start = 0.0, 0, None
    for i, (x, y) in enumerate(batches(loader)):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        if i == warmup + iterations:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # the usual loop's per-step host sync, kept on purpose
        correct += (out.argmax(1) == y).sum().item()
    sync(device)
    return spec.batch_size * iterations / (time.perf_counter() - start), (model, normalize)


@torch.no_grad()
def error_rate(model, images, labels, device, batch=1000):
    """Test error in % of the usual loop's model on already normalized float images."""
    model.eval()
    errors = 0
    for i in range(0, len(labels), batch):
        errors += (model(images[i : i + batch].to(device)).argmax(1) != labels[i : i + batch].to(device)).sum().item()
    model.train()
    return 100.0 * errors / len(labels)
