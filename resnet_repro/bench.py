"""python -m resnet_repro.bench: training images/s of the usual PyTorch loop vs this project's engine.

(a) "usual": how CIFAR is commonly trained in PyTorch: a torchvision-style dataset of PIL images with
    RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize, a DataLoader with workers,
    fp32, eager, and `.item()` on every step for the running loss and accuracy.
(b) "engine": resnet_repro.engine.recipe.train_step on uint8 data resident on the device, batched augmentation
    there, bf16 autocast on CUDA, channels_last, fused SGD, no host sync inside the loop.
Same model, batch and number of iterations, in one process; warm-up iterations are not timed.

With --loader stream (a folder of JPEGs, the ImageNet recipe of experiments/imagenet18_34.toml):
(a) "usual": torchvision's ImageFolder (PIL decode) with RandomResizedCrop, RandomHorizontalFlip,
    ToTensor, Normalize in DataLoader workers, fp32, eager, `.item()` every step;
(b) "engine": resnet_repro.data.stream's workers (torchvision.io decode, crop-then-resize, lighting on the
    device) feeding the engine's step. Both are also timed without a model ("data only"): if that rate
    is not well above the engine's, the GPU waits for the CPU and more workers (cores) are needed.
The usual loop lives in resnet_repro.engine.usual.

With --processes N (CPU): the engine in one process on all of the CPU's threads, then in N processes of threads/N
threads each, training at the same time (their images/s summed): what `run --jobs` weighs when it trains several runs
at once. Each of the N starts its timed steps together (a barrier after loading); as they train the same net, they
also end about together.
"""

import argparse
import multiprocessing
import os
import queue
import sys
import time
from pathlib import Path

import torch

from resnet_repro import data, files
from resnet_repro.config import TrainSpec
from resnet_repro.data import EpochPlan
from resnet_repro.engine import provenance, recipe
from resnet_repro.engine.devices import default_device, device_error, device_name
from resnet_repro.engine.usual import batches, error_rate, run_usual, sync, usual_loader
from resnet_repro.models import parse_name

COLUMNS = (
    "date",
    "device",
    "torch",
    "commit",
    "data",
    "model",
    "path",
    "batch",
    "iterations",
    "images_per_second",
    "speedup",
)


def engine_batches(ds, spec, device, generator):
    """The engine's batches, epoch after epoch, as train.train makes them."""
    epoch = 0
    while True:
        perm = torch.randperm(len(ds.train), device=device, generator=generator)
        yield from ds.train.train_batches(
            EpochPlan(perm, 0, spec.batch_size, ds.mean, generator, spec.seed, epoch, device)
        )
        epoch += 1


def data_rate(batch_iter, batch, iterations, warmup, device):
    """Images/s of a batch source alone (no model): what the data path can feed."""
    start = None
    for i, _ in enumerate(batch_iter):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        if i == warmup + iterations:
            break
    sync(device)
    return batch * iterations / (time.perf_counter() - start)


def run_engine(spec, ds, iterations, warmup, device):
    """Train with the engine's step; returns (images/s over the timed iterations, model)."""
    model = recipe.new_model(spec, ds.num_classes)
    forward, optimizer = recipe.prepare(model, spec, device)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    model.train()
    source, start = engine_batches(ds, spec, device, generator), None
    for i in range(warmup + iterations):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        x, labels = next(source)
        recipe.train_step(forward, optimizer, x, labels, spec, device)
    sync(device)
    return spec.batch_size * iterations / (time.perf_counter() - start), forward


def side_by_side(spec, data_args, processes, iterations, warmup):
    """Summed training images/s of `processes` engines training at once on the CPU, each on an equal share of
    this process's threads. data_args: (data, data_dir) as load_for takes them."""
    threads = max(1, torch.get_num_threads() // processes)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: no fork of a process running threads
    start, results = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=_side_worker, args=(spec, data_args, threads, iterations, warmup, start, results))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    rates = []
    while len(rates) < processes:
        try:
            rate = results.get(timeout=1)
        except queue.Empty:
            if not any(w.exitcode for w in workers):
                continue
            rate = "a side-by-side process died"  # without a word: killed, out of memory
        if isinstance(rate, str):
            for w in workers:
                w.kill()
            raise SystemExit(f"error: {rate}")
        rates.append(rate)
    for w in workers:
        w.join()
    return sum(rates), threads


def _side_worker(spec, data_args, threads, iterations, warmup, start, results):
    try:
        torch.set_num_threads(threads)
        ds = data.load_for(TrainSpec(data=data_args[0]), data_args[1], torch.device("cpu"))
        start.wait()
        results.put(run_engine(spec, ds, iterations, warmup, torch.device("cpu"))[0])
    except Exception as e:  # said by the parent, in one line
        results.put(f"a side-by-side process failed: {e}")


def check_training(ds, spec, iterations, device, workers):
    """Train both paths `iterations` steps from the same seed; return their test errors and a noise
    bound: 3 binomial standard deviations of the difference of two error rates on this test set."""
    _, (usual_model, normalize) = run_usual(spec, ds, iterations, 0, device, workers)
    usual_err = error_rate(usual_model, normalize(ds.test.images.float() / 255), ds.test.labels, device)
    _, engine_model = run_engine(spec, ds, iterations, 0, device)
    _, engine_err, _ = recipe.evaluate(engine_model, ds.test, ds.mean, spec, device)
    p = (usual_err + engine_err) / 200
    bound = 300 * (2 * p * (1 - p) / len(ds.test)) ** 0.5
    return usual_err, engine_err, bound


def device_slug(name):
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


EXAMPLES = """examples:
  uv run python -m resnet_repro.bench                                  # resnet20 and resnet56 on the default device
  uv run python -m resnet_repro.bench --models resnet56 --iterations 500 --compile
  uv run python -m resnet_repro.bench --device cpu --iterations 5 --warmup 1 --check-iterations 0
  uv run python -m resnet_repro.bench --loader stream --data path/to/imagenet --workers 16   # resnet18/34, 224 crops
  uv run python -m resnet_repro.bench --device cpu --processes 2 --iterations 15 --warmup 3   # 1 x 2 threads vs 2 x 1

Writes results/bench/<device>-<date>.csv (appending, each model's rows as soon as they are measured), with
device, torch version and commit."""


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m resnet_repro.bench",
        description="Training images/s of the usual PyTorch CIFAR loop (DataLoader + PIL transforms, fp32, eager) "
        "and of this project's engine, same model, batch and iterations, in one process.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models", help="comma-separated (default: resnet20,resnet56; with --loader stream: resnet18,resnet34)"
    )
    p.add_argument("--batch", type=int, help="default: 128 (CIFAR), 256 with --loader stream (ImageNet)")
    p.add_argument(
        "--loader",
        choices=("memory", "stream"),
        default="memory",
        help="memory: CIFAR-style data resident on the device (default); stream: a folder of JPEGs decoded by "
        "DataLoader workers, the ImageNet recipe (see experiments/imagenet18_34.toml)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="--loader stream: the crop (default 224; scale and test resize follow the paper's ratios, 256-480 "
        "and 256 for 224)",
    )
    p.add_argument("--iterations", type=int, help="timed iterations per path (default: 300 on CUDA, 10 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed iterations first (default: 30 on CUDA, 2 on CPU)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--data", default="mini", help="dataset for both paths (default: the bundled mini CIFAR-10)")
    p.add_argument("--data-dir", default="data")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader workers of the usual loop (and of the engine's with --loader stream)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the engine's model")
    p.add_argument(
        "--check-iterations",
        type=int,
        help="train both paths this long from one seed and compare test errors (default: 1000 on CUDA, 0 = skip on "
        "CPU)",
    )
    p.add_argument(
        "--processes",
        type=int,
        help="CPU: instead of the usual loop, time the engine in 1 process on all threads against N processes "
        "training at once on threads/N each (summed): whether run --jobs N trains more images/s",
    )
    p.add_argument("--out", default="results/bench", help="folder of the CSV (default: results/bench)")
    return p.parse_args(argv)


def resolve_defaults(args, device):
    """Fill in the defaults that depend on the device and the loader; returns the spec's data fields."""
    cuda, streamed = device.type == "cuda", args.loader == "stream"
    args.iterations = args.iterations or (300 if cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (30 if cuda else 2)
    args.check_iterations = args.check_iterations if args.check_iterations is not None else (1000 if cuda else 0)
    args.batch = args.batch or (256 if streamed else 128)
    args.models = args.models or ("resnet18,resnet34" if streamed else "resnet20,resnet56")
    if not streamed:
        return {}
    c = args.image_size
    return dict(
        loader="stream",
        image_size=c,
        scale=(round(c * 256 / 224), round(c * 480 / 224)),
        test_resize=round(c * 256 / 224),
    )


def usage_error(args):
    """Why these options cannot be measured, in one line (None if they can)."""
    for flag, value, least in (
        ("--iterations", args.iterations, 1),
        ("--batch", args.batch, 1),
        ("--warmup", args.warmup, 0),
        ("--processes", args.processes, 2),
    ):
        if value is not None and value < least:
            return f"{flag} must be at least {least}, not {value}"
    if args.models is not None:
        names = [m.strip() for m in args.models.split(",")]
        if not all(names):
            return f"--models {args.models!r}: name the nets, comma-separated, e.g. resnet20,resnet56"
        for name in names:
            try:
                parse_name(name)
            except ValueError as e:
                return str(e)
    if args.device and (error := device_error(args.device)):
        return error
    device = torch.device(args.device) if args.device else default_device()
    if args.processes and (args.loader == "stream" or device.type != "cpu"):
        return "--processes compares processes on the CPU (--device cpu) with the memory loader"
    return None


def main(argv=None):
    args = parse_args(argv)
    if error := usage_error(args):
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = torch.device(args.device) if args.device else default_device()
    shape = resolve_defaults(args, device)  # the spec's data fields
    try:
        ds = data.load_for(TrainSpec(data=args.data, **shape), args.data_dir, device, args.workers)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.batch > len(ds.train):
        print(
            f"error: --batch {args.batch} is more than the {len(ds.train):,} training images of {ds.name}",
            file=sys.stderr,
        )
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name, check = device_name(device), args.check_iterations
    iterations, warmup = args.iterations, args.warmup
    out = Path(args.out) / f"{device_slug(name)}-{time.strftime('%Y-%m-%d')}.csv"
    common = dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), device=name, torch=str(torch.__version__))
    common |= dict(commit=provenance.git_commit(), data=ds.name, batch=args.batch, iterations=iterations)
    print(
        f"{name}, torch {torch.__version__}, batch {args.batch}, {iterations} timed iterations after {warmup} "
        f"warm-up, data: {ds.name}"
    )
    if not args.processes:
        print(f"{'model':<10}{'usual img/s':>14}{'engine img/s':>14}{'speedup':>9}")
    # each model's rows are written as soon as they are measured: a bench stopped midway keeps them
    save = lambda rows: append_rows(out, [{**common, **row} for row in rows])
    if args.loader == "stream":
        spec = TrainSpec(data=args.data, batch_size=args.batch, **shape)
        save(bench_data(ds, spec, iterations, warmup, device, args.workers))
        if check:
            print("  (the same-seed training check is for --loader memory; skipped)")
            check = 0
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = TrainSpec(
            model=model_name, batch_size=args.batch, compile=args.compile, iterations=iterations, milestones=(), **shape
        )
        if args.processes:
            save(bench_processes(spec, ds, (args.data, args.data_dir), args.processes, iterations, warmup))
        else:
            save(bench_model(spec, ds, iterations, warmup, device, args.workers, check))
    print(f"wrote {out}")
    return 0


def bench_data(ds, spec, iterations, warmup, device, workers):
    """Images/s of both data paths alone (stream loader): whether the data can feed the model."""
    batch = spec.batch_size
    usual = data_rate(batches(usual_loader(ds, spec, workers, device)[0]), batch, iterations, warmup, device)
    generator = torch.Generator(device=device).manual_seed(0)
    engine = data_rate(engine_batches(ds, spec, device, generator), batch, iterations, warmup, device)
    print(f"{'data only':<10}{usual:>14.0f}{engine:>14.0f}{engine / usual:>8.1f}x   ({workers} workers, no model)")
    return [
        {"model": "-", "path": "usual-data", "images_per_second": round(usual, 1), "speedup": 1.0},
        {
            "model": "-",
            "path": "engine-data",
            "images_per_second": round(engine, 1),
            "speedup": round(engine / usual, 2),
        },
    ]


def bench_model(spec, ds, iterations, warmup, device, workers, check):
    """Images/s of the usual loop and of the engine for one model; with `check`, their test errors after that many
    iterations from one seed."""
    usual, _ = run_usual(spec, ds, iterations, warmup, device, workers)
    engine, _ = run_engine(spec, ds, iterations, warmup, device)
    print(f"{spec.model:<10}{usual:>14.0f}{engine:>14.0f}{engine / usual:>8.1f}x")
    if check:
        usual_err, engine_err, bound = check_training(ds, spec, check, device, workers)
        verdict = "within noise" if abs(usual_err - engine_err) <= bound else "NOT within noise"
        print(
            f"  {spec.model} check after {check} iterations from one seed: test error usual {usual_err:.2f}%, "
            f"engine {engine_err:.2f}% (difference {engine_err - usual_err:+.2f}, noise bound {bound:.2f}): {verdict}"
        )
    path = "engine" + ("+compile" if spec.compile else "")
    return [
        {"model": spec.model, "path": "usual", "images_per_second": round(usual, 1), "speedup": 1.0},
        {"model": spec.model, "path": path, "images_per_second": round(engine, 1), "speedup": round(engine / usual, 2)},
    ]


def bench_processes(spec, ds, data_args, processes, iterations, warmup):
    """Images/s of the engine in one process on all threads, then of `processes` at once (summed); their speedup
    is over the one process."""
    cpu = torch.device("cpu")
    alone = run_engine(spec, ds, iterations, warmup, cpu)[0]
    together, threads = side_by_side(spec, data_args, processes, iterations, warmup)
    one = f"engine 1x{torch.get_num_threads()} threads"
    many = f"engine {processes}x{threads} threads"
    print(f"{spec.model:<10}{one:>24}{alone:>8.0f}{many:>24}{together:>8.0f}{together / alone:>8.2f}x")
    return [
        {"model": spec.model, "path": one, "images_per_second": round(alone, 1), "speedup": 1.0},
        {
            "model": spec.model,
            "path": many,
            "images_per_second": round(together, 1),
            "speedup": round(together / alone, 2),
        },
    ]


def append_rows(out, rows):
    try:
        files.append_csv(out, COLUMNS, rows)
    except files.HeaderMismatch:
        raise SystemExit(f"error: {out} has other columns than a bench CSV; move it aside to bench again") from None


if __name__ == "__main__":
    files.utf8_console()
    sys.exit(main())
