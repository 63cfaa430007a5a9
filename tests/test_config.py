import pytest

from resnet_repro import config as cfg
from resnet_repro.config import SpecError, TrainSpec


def write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_degradation_experiment_is_the_papers_recipe():
    exp = cfg.load_experiment("degradation")
    assert list(exp.runs) == ["plain20", "plain56", "resnet20", "resnet56"] and exp.name == "degradation"
    s = exp.runs["resnet56"]
    assert (s.model, s.data, s.batch_size, s.lr, s.momentum, s.weight_decay) == (
        "resnet56",
        "cifar10",
        128,
        0.1,
        0.9,
        1e-4,
    )
    assert (s.iterations, s.milestones, s.lr_decay, s.warmup_lr) == (64000, (32000, 48000), 0.1, 0.0)


def test_quick_keeps_the_schedule_shape():
    exp = cfg.load_experiment("degradation", quick=True)
    s = exp.runs["plain56"]
    assert exp.name == "degradation-quick" and exp.quick and s.data == "mini"
    assert s.milestones == (round(s.iterations * 0.5), round(s.iterations * 0.75))


def test_layers_apply_in_order_and_cli_wins(tmp_path):
    path = write(
        tmp_path,
        """
runs = ["plain20", "deep"]
[train]
lr = 0.2
iterations = 1000
milestones = [500, 750]
[run.deep]
model = "resnet110"
warmup_lr = 0.01
""",
    )
    exp = cfg.load_experiment(path, overrides={"iterations": 100, "seed": 3})
    assert exp.runs["plain20"].lr == 0.2 and exp.runs["plain20"].milestones == (50, 75)
    assert exp.runs["deep"].model == "resnet110" and exp.runs["deep"].warmup_lr == 0.01 and exp.runs["deep"].seed == 3
    assert list(cfg.load_experiment(path, runs=["deep"]).runs) == ["deep"]


@pytest.mark.parametrize(
    "text,match",
    [
        (
            'runs = ["plain20"]\n[train]\nlearning_rate = 0.1\n',
            r"unknown key 'learning_rate'; valid keys are model, shortcut",
        ),
        ('runs = ["plain20"]\nrun_list = 1\n', r"unknown key 'run_list'; valid top-level keys"),
        ('runs = ["plain20"]\n[train]\nlr = "fast"\n', r"lr must be float"),
        ('runs = ["plain20"]\n[train]\nbatch_size = 1.5\n', r"batch_size must be int"),
        ('runs = ["plain20"]\n[train]\nmilestones = [3, 2]\n', r"milestones must increase"),
        ('runs = ["vgg16"]\n', r"not a model name"),
        ('runs = ["plain20"]\n[run.resnet20]\nlr = 1\n', r"\[run.resnet20\] names no run"),
        ("runs = []\n", r"non-empty list"),
        ('runs = ["plain20"]\n[train]\nshortcut = "D"\n', r"shortcut must be one of A, B, C"),
        ('runs = ["plain20"]\n[train]\nlr = 0.1.2\n', r"malformed TOML: .*line 3"),
        (
            'runs = ["plain20"]\n[train]\nschedule = "cosine"\n',
            r"schedule must be one of step, linear, plateau, not 'cosine'",
        ),
        ('runs = ["plain20"]\n[train]\nplateau_on = "val"\n', r"plateau_on must be train_err or test_err"),
        ('runs = ["plain20"]\n[train]\nplateau_patience = 0\n', r"plateau_patience must be positive"),
        (
            'runs = ["plain20"]\n[train]\niterations = 100\nramp = 100\n',
            r"ramp \(100\) must be shorter than iterations \(100\)",
        ),
        ('runs = ["plain20"]\n[train]\nlog_every = -1\n', r"train_size, ramp and log_every must not be negative"),
        (
            'runs = ["plain20"]\n[quick]\nruns = ["resnet20"]\n',
            r"\[quick\] runs must be a non-empty list of names from runs",
        ),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, text, match):
    with pytest.raises(SpecError, match=match):
        cfg.load_experiment(write(tmp_path, text))


def test_unknown_experiment_and_run():
    with pytest.raises(SpecError, match=r"unknown experiment 'nope'; available: .*degradation"):
        cfg.load_experiment("nope")
    with pytest.raises(SpecError, match=r"unknown run\(s\) resnet32 .* its runs are plain20, plain56"):
        cfg.load_experiment("degradation", runs=["resnet32"])


def test_set_overrides_are_typed_from_the_fields():
    assert cfg.parse_override("lr=0.05") == ("lr", 0.05)
    assert cfg.parse_override("lr=1") == ("lr", 1.0)
    assert cfg.parse_override("data=mini") == ("data", "mini")
    assert cfg.parse_override("milestones=[10, 20]") == ("milestones", (10, 20))
    assert cfg.parse_override("shortcut=none") == ("shortcut", None)
    assert cfg.parse_override("compile=true") == ("compile", True)
    with pytest.raises(SpecError, match="batch_size must be int"):
        cfg.parse_override("batch_size=big")
    with pytest.raises(SpecError, match="unknown key 'lrr'"):
        cfg.parse_override("lrr=0.1")
    with pytest.raises(SpecError, match="key=value"):
        cfg.parse_override("lr")


def test_every_experiment_file_resolves():
    assert cfg.available()
    for name in cfg.available():
        exp = cfg.load_experiment(name)
        assert exp.runs and all(isinstance(s, TrainSpec) for s in exp.runs.values())
        assert cfg.load_experiment(name, quick=True).runs
