"""Experiments as data: `experiments/<name>.toml` -> one frozen `TrainSpec` per run.

An experiment file holds
    description = "..."                  # one line, shown by --list
    runs = ["plain20", "resnet20"]       # run names; a name is also the model unless [run.<name>] says otherwise
    [train]  key = value ...             # the recipe shared by every run (any TrainSpec field)
    [quick]  key = value ...             # what --quick changes (data, iterations, ...)
    [run.<name>] key = value ...         # what one run changes (e.g. warm-up for resnet110)
Precedence, lowest first: TrainSpec defaults, [train], [quick] (with --quick), [run.<name>], command line.
Whenever a layer changes `iterations` without giving `milestones` (or `ramp`), they scale with it, so
a shorter schedule keeps the paper's shape (lr steps at 50% and 75%).
[quick] may also hold `runs = [...]`: the subset of runs --quick trains (when all do not fit in minutes).
"""

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# a wheel ships experiments/ inside the package; a checkout (or editable install) reads the top-level one users edit
EXPERIMENTS_DIR = _PACKAGE / "experiments" if (_PACKAGE / "experiments").is_dir() else _PACKAGE.parent / "experiments"
EXPERIMENT_KEYS = ("description", "runs", "train", "quick", "run")
FLOAT32_MAX = 3.4e38
SCHEDULES = ("step", "linear", "plateau")
MAX_ITERATIONS = 10**9
# run and experiment names become folder names: plain names only (no "..", no "/", nothing empty)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")


class SpecError(Exception):
    """A malformed experiment or override; the message names the problem and the valid choices."""


@dataclass(frozen=True)
class TrainSpec:
    model: str = "resnet20"  # plain<depth> or resnet<depth>, see resnet_repro.models.available()
    shortcut: str | None = None  # "A", "B" or "C"; None: the family's default (A for CIFAR nets, B for 18..152)
    stem: str | None = None  # "cifar" or "imagenet"; None: the family's default
    data: str = "cifar10"  # cifar10, cifar100 (downloaded), mini (bundled), or a path to an ImageFolder dir / .tar.gz
    loader: str = (
        "memory"  # "memory": decoded once, resident on the device, CIFAR's pad-crop-flip (resnet_repro.data.memory);
    )
    # "stream": decoded per step by DataLoader workers with the paper's ImageNet augmentation (resnet_repro.data.stream)
    train_size: int = 0  # >0: train on a fixed random subset of this many training images (the same for every seed)
    val_size: int = (
        0  # >0: hold out this many training images and evaluate on them (the paper chose its schedule on 45k/5k)
    )
    image_size: int = 32  # images must be this size (CIFAR: 32) ... (stream: the side of the crops, 224)
    resize: bool = False  # ... unless resized to it when decoded (ImageFolder data, e.g. 224 for fine-tuning)
    scale: tuple[int, ...] = (
        256,
        480,
    )  # stream: a training image's shorter side is resized to a random value in this range
    test_resize: int = (
        256  # stream: an evaluation image's shorter side is resized to this, then the centre crop is taken
    )
    lighting: float = 0.1  # stream: std of AlexNet's PCA colour augmentation (0: none)
    ten_crop: bool = False  # stream: after the last iteration also test with 10 crops (Table 2), into evaluation.json
    init_weights: str = (
        ""  # "": He init; "torchvision": its ImageNet weights (torch cache or download); or a weights file
    )
    batch_size: int = 128  # the paper's mini-batch (it was split over 2 GPUs)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4  # applied to every parameter, BN included
    iterations: int = 64_000  # the paper stops at 64k iterations (about 164 epochs of 50k)
    # "step": lr x lr_decay at each milestone (the paper's CIFAR recipe); "linear": lr falls linearly to 0 at the end;
    # "plateau": lr x lr_decay whenever the error stops falling (the paper's ImageNet rule; see plateau_*)
    schedule: str = "step"
    milestones: tuple[int, ...] = (
        32_000,
        48_000,
    )  # schedule = "step": lr multiplied by lr_decay at each of these iterations
    lr_decay: float = 0.1
    # schedule = "plateau": at each CSV row, the error watched ("train_err", or "test_err": the split evaluated each
    # row, the held-out one with val_size > 0) counts as stalled unless it is plateau_delta points below its lowest
    # since the last fall; after plateau_patience stalled rows the lr falls, at most plateau_drops times
    plateau_on: str = "train_err"
    plateau_patience: int = 5
    plateau_delta: float = 0.1
    plateau_drops: int = 3  # as many falls as imagenet18_34's milestones (the paper does not say)
    ramp: int = 0  # >0: the lr rises linearly from lr/ramp to lr over the first `ramp` iterations
    warmup_lr: float = (
        0.0  # >0: train at this lr until the training error falls below warmup_until_err (ResNet-110: 0.01)
    )
    warmup_until_err: float = 80.0  # % training error, measured over the mini-batches since the last check
    seed: int = 0  # model init, data order and augmentation
    log_every: int = 0  # 0: one CSV row (and test) per epoch; N > 0: one every N iterations (short runs on small data)
    eval_batch_size: int = 1000
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; or "bf16", "fp32"
    channels_last: bool = True
    compile: bool = False  # torch.compile the model

    def __post_init__(self):
        from resnet_repro.models import parse_name

        try:
            parse_name(self.model)
        except ValueError as e:
            raise SpecError(str(e)) from None
        for ok, message in (*_value_checks(self), *_choice_checks(self)):
            if not ok:
                raise SpecError(message)


def _value_checks(s):
    """(holds, what to say) of the numbers: finite, in range, consistent."""
    floats = {f.name: getattr(s, f.name) for f in fields(s) if f.type is float}
    return [
        *((math.isfinite(v), f"{k} must be a finite number, not {v}") for k, v in floats.items()),
        (
            s.lr <= FLOAT32_MAX and s.warmup_lr <= FLOAT32_MAX,
            f"lr and warmup_lr must be at most {FLOAT32_MAX:.3g} (the optimizer applies them in float32)",
        ),
        (0 <= s.momentum <= 1, f"momentum must be between 0 and 1, not {s.momentum}"),
        (s.weight_decay >= 0, f"weight_decay must not be negative, not {s.weight_decay}"),
        (s.warmup_until_err >= 0, f"warmup_until_err must not be negative, not {s.warmup_until_err}"),
        (
            s.iterations <= MAX_ITERATIONS,
            f"iterations must be at most {MAX_ITERATIONS:,} (the paper's longest run takes 600,000), not "
            f"{s.iterations:,}",
        ),
        (s.batch_size > 0 and s.eval_batch_size > 0, "batch sizes must be positive"),
        (s.iterations > 0, f"iterations must be positive, not {s.iterations}"),
        (s.lr > 0 and 0 < s.lr_decay <= 1, "lr must be positive and lr_decay in (0, 1]"),
        (list(s.milestones) == sorted(s.milestones), f"milestones must increase: {list(s.milestones)}"),
        (s.val_size >= 0 and s.warmup_lr >= 0, "val_size and warmup_lr must not be negative"),
        (0 <= s.seed < 2**63, f"seed must be between 0 and 2**63 - 1, not {s.seed}"),
        (s.train_size >= 0 and s.ramp >= 0 and s.log_every >= 0, "train_size, ramp and log_every must not be negative"),
        (s.ramp < s.iterations, f"ramp ({s.ramp}) must be shorter than iterations ({s.iterations})"),
        (s.image_size >= 8, f"image_size must be at least 8, not {s.image_size}"),
        (s.lighting >= 0, "lighting must not be negative"),
        (
            s.plateau_patience > 0 and s.plateau_delta >= 0 and s.plateau_drops >= 0,
            "plateau_patience must be positive, plateau_delta and plateau_drops not negative",
        ),
    ]


def _choice_checks(s):
    """(holds, what to say) of the named choices and of what applies to which loader."""
    from resnet_repro.models import SHORTCUTS, STEMS

    return [
        (s.shortcut in (None, *SHORTCUTS), f"shortcut must be one of {', '.join(SHORTCUTS)}, not {s.shortcut!r}"),
        (s.stem in (None, *STEMS), f"stem must be one of {', '.join(STEMS)}, not {s.stem!r}"),
        (s.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, not {s.schedule!r}"),
        (
            s.plateau_on in ("train_err", "test_err"),
            f"plateau_on must be train_err or test_err, not {s.plateau_on!r}",
        ),
        (s.precision in ("auto", "bf16", "fp32"), f"precision must be auto, bf16 or fp32, not {s.precision!r}"),
        (s.loader in ("memory", "stream"), f"loader must be memory or stream, not {s.loader!r}"),
        (s.loader == "memory" or s.train_size == 0, 'train_size applies to loader = "memory"'),
        (
            len(s.scale) == 2 and (s.loader == "memory" or s.image_size <= s.scale[0] <= s.scale[1]),
            f"scale must be [low, high] with image_size ({s.image_size}) <= low <= high, not {list(s.scale)}",
        ),
        (
            s.loader == "memory" or s.test_resize >= s.image_size,
            f"test_resize ({s.test_resize}) must be at least image_size ({s.image_size})",
        ),
        (s.loader == "stream" or not s.ten_crop, 'ten_crop needs loader = "stream" (crops of a larger image)'),
        (
            s.loader == "memory" or s.val_size == 0,
            'val_size applies to loader = "memory"; the stream loader evaluates on val/ (or test/)',
        ),
    ]


SPEC_FIELDS = {f.name: f for f in fields(TrainSpec)}
# as config.json records them (tuples as lists): a key added since a run started counts as its default
SPEC_DEFAULTS = {k: list(f.default) if isinstance(f.default, tuple) else f.default for k, f in SPEC_FIELDS.items()}


def spec_from_config(config):
    """The TrainSpec a run's config.json (or a Job's JSON) records; other keys are ignored."""
    return TrainSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in SPEC_FIELDS})


@dataclass(frozen=True)
class Experiment:
    name: str  # results go to results/<name>/<run>/ (quick runs: <name>-quick)
    description: str
    runs: dict  # run name -> TrainSpec
    quick: bool = False


def _check_type(key, value, where):
    """Return `value` as the type of TrainSpec field `key` (ints may stand for floats, lists for tuples)."""
    if key not in SPEC_FIELDS:
        raise SpecError(f"{where}: unknown key {key!r}; valid keys are {', '.join(SPEC_FIELDS)}")
    hint = typing.get_type_hints(TrainSpec)[key]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return None
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if (
            typing.get_origin(t) is tuple
            and isinstance(value, (list, tuple))
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            return tuple(value)
        if t in (int, str, bool) and type(value) is t:
            return value
    names = " or ".join("list of int" if typing.get_origin(t) is tuple else t.__name__ for t in allowed)
    raise SpecError(f"{where}: {key} must be {names}, not {value!r}")


def parse_override(text):
    """'lr=0.05' -> ('lr', 0.05), typed from the TrainSpec field; for --set."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise SpecError(f"--set takes key=value, not {text!r}")
    hint = typing.get_type_hints(TrainSpec).get(key)
    if hint is None:
        _check_type(key, None, "--set")  # raises with the valid keys
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words are strings: --set data=mini
    if raw.strip().lower() in ("none", "null"):
        value = None
    return key, _check_type(key, value, "--set")


def apply(spec, changes, where):
    """A new spec with `changes` applied; milestones scale with iterations unless given too."""
    changes = {k: _check_type(k, v, where) for k, v in changes.items()}
    if "iterations" in changes and "milestones" not in changes:
        scale = changes["iterations"] / spec.iterations
        changes["milestones"] = tuple(round(m * scale) for m in spec.milestones)
        if "ramp" not in changes:
            changes["ramp"] = round(spec.ramp * scale)
    try:
        return dataclasses.replace(spec, **changes)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None


def experiment_path(name):
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return path
    if path.suffix == ".toml" and path.exists():
        raise SpecError(f"{path} is not a file; an experiment is a .toml file (see experiments/)")
    path = EXPERIMENTS_DIR / f"{name}.toml"
    if not path.exists():
        raise SpecError(f"unknown experiment {name!r}; available: {', '.join(available())} (or a path to a .toml file)")
    return path


def available():
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))


def read_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: malformed TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start}); TOML files are UTF-8") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read it ({e.strerror})") from None


def load_experiment(name, quick=False, overrides=None, runs=None):
    """Resolve an experiment (a name in experiments/ or a path) into one TrainSpec per run.

    overrides: {key: value} from the command line, applied to every run; runs: a subset of run names."""
    path = experiment_path(name)
    doc = read_toml(path)
    names, quick_table, quick_runs = _check_document(path, doc)
    if quick and quick_runs and not runs:
        names = [n for n in names if n in quick_runs]
    if runs:
        unknown = [r for r in runs if r not in names]
        if unknown:
            raise SpecError(
                f"unknown run(s) {', '.join(unknown)} in experiment {path.stem}; its runs are {', '.join(names)}"
            )
        names = [n for n in names if n in runs]
    specs = {}
    for run in names:
        table = doc.get("run", {}).get(run, {})
        layers = [
            (doc.get("train", {}), f"{path}: [train]"),
            *([(quick_table, f"{path}: [quick]")] if quick else []),
            (table, f"{path}: [run.{run}]"),
            (overrides or {}, "command line"),
        ]
        if not _is_model(table.get("model", run)):
            raise SpecError(
                f'{path}: run {run!r} is not a model name; give it one in [run.{run}], e.g. model = "resnet110"'
            )
        spec = TrainSpec(model=table.get("model", run))
        for changes, where in layers:
            spec = apply(spec, changes, where)
        specs[run] = spec
    stem = path.stem + ("-quick" if quick else "")
    return Experiment(stem, str(doc.get("description", "")), specs, quick)


def _check_document(path, doc):
    """The experiment file's shape: (its run names, its [quick] table without `runs`, [quick]'s runs or None)."""
    for key in doc:
        if key not in EXPERIMENT_KEYS:
            raise SpecError(f"{path}: unknown key {key!r}; valid top-level keys are {', '.join(EXPERIMENT_KEYS)}")
    for key in ("train", "quick", "run"):
        if not isinstance(doc.get(key, {}), dict):
            raise SpecError(f"{path}: {key} must be a table ([{key}] followed by key = value lines), not {doc[key]!r}")
    for run, table in doc.get("run", {}).items():
        if not isinstance(table, dict):
            raise SpecError(
                f"{path}: run.{run} must be a table ([run.{run}] followed by key = value lines), not {table!r}"
            )
    names = doc.get("runs")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SpecError(f'{path}: \'runs\' must be a non-empty list of run names, e.g. runs = ["plain20", "resnet20"]')
    for name in [path.stem, *names]:
        if not NAME.match(name):
            what = "experiment file name" if name == path.stem else "run name"
            raise SpecError(
                f"{path}: {what} {name!r} is not a plain name (letters, digits, _ . + -, not starting with . or -): "
                "it names a folder"
            )
    quick_table = dict(doc.get("quick", {}))
    quick_runs = quick_table.pop("runs", None)
    if quick_runs is not None and (
        not isinstance(quick_runs, list) or not quick_runs or not set(quick_runs) <= set(names)
    ):
        raise SpecError(
            f"{path}: [quick] runs must be a non-empty list of names from runs = {names}, not {quick_runs!r}"
        )
    for extra in set(doc.get("run", {})) - set(names):
        raise SpecError(f"{path}: [run.{extra}] names no run in runs = {names}")
    return names, quick_table, quick_runs


def _is_model(name):
    from resnet_repro.models import parse_name

    try:
        parse_name(name)
        return True
    except ValueError:
        return False
