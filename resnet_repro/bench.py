"""python -m resnet_repro.bench: training images/s of the usual PyTorch loop vs this project's engine.

(a) "usual": how the seed posts train CIFAR: a torchvision-style dataset of PIL images with
    RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize, a DataLoader with workers,
    fp32, eager, and `.item()` on every step for the running loss and accuracy.
(b) "engine": resnet_repro.train.train_step on uint8 data resident on the device, batched augmentation
    there, bf16 autocast on CUDA, channels_last, fused SGD, no host sync inside the loop.
Same model, batch and number of iterations, in one process; warm-up iterations are not timed.
"""

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from resnet_repro import data as datamod
from resnet_repro import train as trainer
from resnet_repro.config import TrainSpec
from resnet_repro.models import build_model

COLUMNS = ("date", "device", "torch", "commit", "data", "model", "path", "batch", "iterations", "images_per_second", "speedup")


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


def usual_loader(ds, batch, workers, device, seed=0):
    from torchvision import transforms

    mean = ds.train.images.float().mean((0, 2, 3)) / 255
    std = (ds.train.images.float() / 255).std((0, 2, 3))
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean.tolist(), std.tolist()),
    ])  # fmt: skip
    dataset = PILArrays(ds.train.images.cpu(), ds.train.labels.cpu(), transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    ), transforms.Normalize(mean.tolist(), std.tolist())


def batches(loader):
    while True:
        yield from loader


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_usual(model_name, ds, batch, iterations, warmup, device, workers, seed=0):
    """Train with the usual loop; returns (images/s over the timed iterations, model)."""
    torch.manual_seed(seed)
    model = build_model(model_name, ds.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader, normalize = usual_loader(ds, batch, workers, device, seed)
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
        running_loss += loss.item()
        correct += (out.argmax(1) == y).sum().item()
    sync(device)
    return batch * iterations / (time.perf_counter() - start), (model, normalize)


def run_engine(spec, ds, iterations, warmup, device):
    """Train with the engine's step; returns (images/s over the timed iterations, model)."""
    model, forward, optimizer = trainer.setup_model(spec, ds.num_classes, device)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    model.train()
    per_epoch = len(ds.train) // spec.batch_size
    batches, start = None, None
    for i in range(warmup + iterations):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        if i % per_epoch == 0:
            perm = torch.randperm(len(ds.train), device=device, generator=generator)
            batches = trainer.train_batches(ds.train, perm, 0, spec.batch_size, ds.mean, generator, spec, i // per_epoch, device)
        x, labels = next(batches)
        trainer.train_step(forward, optimizer, x, labels, spec, device)
    sync(device)
    return spec.batch_size * iterations / (time.perf_counter() - start), forward


@torch.no_grad()
def test_error(model, images, labels, device, batch=1000):
    model.eval()
    errors = 0
    for i in range(0, len(labels), batch):
        errors += (model(images[i : i + batch].to(device)).argmax(1) != labels[i : i + batch].to(device)).sum().item()
    model.train()
    return 100.0 * errors / len(labels)


def check_training(model_name, ds, spec, iterations, device, workers):
    """Train both paths `iterations` steps from the same seed; return their test errors and a noise
    bound: 3 binomial standard deviations of the difference of two error rates on this test set."""
    _, (usual_model, normalize) = run_usual(model_name, ds, spec.batch_size, iterations, 0, device, workers, spec.seed)
    usual_err = test_error(usual_model, normalize(ds.test.images.float() / 255), ds.test.labels, device)
    _, engine_model = run_engine(spec, ds, iterations, 0, device)
    _, engine_err, _ = trainer.evaluate(engine_model, ds.test, ds.mean, spec, device)
    p = (usual_err + engine_err) / 200
    bound = 300 * (2 * p * (1 - p) / len(ds.test)) ** 0.5
    return usual_err, engine_err, bound


def device_slug(name):
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m resnet_repro.bench",
        description="Training images/s of the usual PyTorch CIFAR loop (DataLoader + PIL transforms, fp32, eager) "
        "and of this project's engine, same model, batch and iterations, in one process.",
        epilog="examples:\n"
        "  uv run python -m resnet_repro.bench                                  # resnet20 and resnet56 on the default device\n"
        "  uv run python -m resnet_repro.bench --models resnet56 --iterations 500 --compile\n"
        "  uv run python -m resnet_repro.bench --device cpu --iterations 5 --warmup 1 --check-iterations 0\n\n"
        "Writes results/bench/<device>-<date>.csv (appending), with device, torch version and commit.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="resnet20,resnet56", help="comma-separated (default: resnet20,resnet56)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iterations", type=int, default=None, help="timed iterations per path (default: 300 on CUDA, 10 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default: 30 on CUDA, 2 on CPU)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--data", default="mini", help="dataset for both paths (default: the bundled mini CIFAR-10)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers of the usual loop")
    p.add_argument("--compile", action="store_true", help="torch.compile the engine's model")
    p.add_argument("--check-iterations", type=int, default=None,
                   help="train both paths this long from one seed and compare test errors (default: 1000 on CUDA, 0 = skip on CPU)")
    p.add_argument("--out", default="results/bench", help="folder of the CSV (default: results/bench)")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    iterations = args.iterations or (300 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (30 if cuda else 2)
    check = args.check_iterations if args.check_iterations is not None else (1000 if cuda else 0)
    try:
        ds = datamod.load(args.data, args.data_dir, device)
    except datamod.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = trainer.device_name(device)
    stamp = time.strftime("%Y-%m-%d")
    common = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": name, "torch": str(torch.__version__),
              "commit": trainer.git_commit(), "data": ds.name, "batch": args.batch, "iterations": iterations}
    print(f"{name}, torch {torch.__version__}, batch {args.batch}, {iterations} timed iterations after {warmup} warm-up, data: {ds.name}")
    print(f"{'model':<10}{'usual img/s':>14}{'engine img/s':>14}{'speedup':>9}")
    rows = []
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = TrainSpec(model=model_name, batch_size=args.batch, compile=args.compile, iterations=iterations, milestones=())
        usual, _ = run_usual(model_name, ds, args.batch, iterations, warmup, device, args.workers)
        engine, _ = run_engine(spec, ds, iterations, warmup, device)
        print(f"{model_name:<10}{usual:>14.0f}{engine:>14.0f}{engine / usual:>8.1f}x")
        rows.append({**common, "model": model_name, "path": "usual", "images_per_second": round(usual, 1), "speedup": 1.0})
        rows.append({**common, "model": model_name, "path": "engine" + ("+compile" if args.compile else ""),
                     "images_per_second": round(engine, 1), "speedup": round(engine / usual, 2)})
        if check:
            usual_err, engine_err, bound = check_training(model_name, ds, spec, check, device, args.workers)
            verdict = "within noise" if abs(usual_err - engine_err) <= bound else "NOT within noise"
            print(f"  check after {check} iterations from one seed: test error usual {usual_err:.2f}%, engine {engine_err:.2f}% "
                  f"(difference {engine_err - usual_err:+.2f}, noise bound {bound:.2f}): {verdict}")

    out = Path(args.out) / f"{device_slug(name)}-{stamp}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
