"""README.md and docs/*.md against the repository: their tables equal the files they come from, the few
numbers left in their prose match the CSVs, the modules, flags and links they show exist, and the cheap
commands they show run (in this process, as `python -m` would)."""

import contextlib
import functools
import importlib
import importlib.util
import io
import json
import re
import runpy
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_tool
from resnet_repro import files, models, run
from resnet_repro.engine import rundir, stopping

docs = load_tool("docs")
ROOT = docs.ROOT
DOCS = docs.doc_paths()
SPEED_TABLE = "| net | 1 process, 2 threads | 2 processes, 1 thread each (sum) | ratio |"
HAND_TABLES = {  # typed by hand, and why
    ("docs/speed.md", SPEED_TABLE): "one measurement, not a bench option",
    (
        "docs/claims.md",
        "| id | the check (final = the last CSV row) | the paper's evidence |",
    ): "the claims' rules, words",
}
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
COMMAND = re.compile(r"-m (resnet_repro\.\w+)([^`#\n]*)")
SUBCOMMANDS = {"resnet_repro.analysis": ("compare", "predictions", "claims", "evaluate")}
# each cheap command exactly as a doc shows it, and where it writes (its --out goes to a temporary folder)
CHEAP = {
    "uv run python -m resnet_repro.run --list": None,
    "uv run python -m resnet_repro.analysis results/cpu-demo --no-fig7": "dir",
    "uv run python -m resnet_repro.analysis compare results/cpu-demo/degradation-quick results/cpu-8k/degradation": "png",
    "uv run python -m resnet_repro.analysis compare results/cpu-8k/degradation/resnet20 results/cpu-full/degradation/resnet20 --out figures/resnet20-full-vs-8k.png": "png",
}


def name(path):
    return path.relative_to(ROOT).as_posix()


def without_fences(text):
    return FENCE.sub("", text)


def python_m(module, *argv):
    """`python -m module argv` in this process: (exit code, stdout + stderr)."""
    out, old_argv = io.StringIO(), sys.argv
    # a command's __main__ takes over SIGINT/SIGTERM for its whole process: give this one back its own
    handlers, active = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}, list(stopping._active)
    sys.argv = [module, *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules", as imported already
            try:
                runpy.run_module(module, run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) or e.code is None else 1
    finally:
        sys.argv = old_argv
        stopping._active[:] = active
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return code or 0, out.getvalue()


@functools.cache
def help_text(module, subcommand=None):
    code, out = python_m(module, *([subcommand] if subcommand else []), "--help")
    assert code == 0, f"python -m {module} {subcommand or ''} --help exited {code}:\n{out}"
    return out


def shown_commands():
    """(doc, module, args) for every `-m resnet_repro.X ...` in README.md and docs/*.md."""
    for path in DOCS:
        for m in COMMAND.finditer(path.read_text()):
            try:
                args = shlex.split(m.group(2))
            except ValueError:
                args = m.group(2).split()
            yield name(path), m.group(1), args


@pytest.mark.parametrize("path", DOCS, ids=name)
def test_blocks_equal_their_sources(path):
    stale = docs.stale_blocks(path)
    assert not stale, (
        f"{name(path)}: these blocks differ from their sources: {stale}; run `uv run python tools/docs.py`"
    )


def test_models_block_matches_the_nets():
    """The models block is left out above: counting multiply-adds takes a minute on 2 busy cores. Its layers
    and parameters are checked here, and its GPU estimate against its own multiply-adds."""
    text = (ROOT / "docs/usage.md").read_text()
    block = re.search(r"<!-- generated: models -->\n(.*?)<!-- end generated -->", text, re.S).group(1)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]
    assert len(rows) >= 8
    for label, layers, params, macs, hours in rows:
        net = label.split(" / ")[-1].split()[0]
        model = models.build_model(net, num_classes=1000 if "1000 classes" in label else 10)
        assert int(params.replace(",", "")) == models.num_params(model), label
        assert int(layers) == models.weighted_layers(model), label
        value = float(macs[:-1]) * {"M": 1e6, "G": 1e9}[macs[-1]]
        if hours != "—":
            assert float(hours) == pytest.approx(value * docs.FLOPS_PER_MULT_ADD / docs.ASSUMED_FLOPS / 3600, abs=0.01)


@pytest.mark.parametrize("path", DOCS, ids=name)
def test_tables_come_from_files(path):
    """A table outside a block was typed by hand: only those of HAND_TABLES may be."""
    text = without_fences(docs.BLOCK.sub("", path.read_text()))
    headers = [m.group(1) for m in re.finditer(r"(?:^|\n\n)(\|.*\|)\n\|[-|]+\|", text)]
    typed = [h for h in headers if (name(path), h) not in HAND_TABLES]
    assert not typed, f"{name(path)}: tables typed by hand (put them in a block, see tools/docs.py): {typed}"


def test_prose_numbers_match_the_csvs():
    """The few numbers left in prose, each against the file it comes from."""
    results, speed = (ROOT / "docs/results.md").read_text(), (ROOT / "docs/speed.md").read_text()
    paper = pd.read_csv(ROOT / "figures/table6.csv").set_index("depth").paper_test_err[20]
    assert f"paper's {paper:.2f}%" in results, "docs/results.md: the paper's ResNet-20 error (figures/table6.csv)"
    hours = pd.read_csv(ROOT / "figures/summary.csv").set_index("run").minutes["resnet20"] / 60
    for words in (f"another {hours:.0f} hours", f"about {hours:.0f} hours"):
        assert words in results, f"docs/results.md: the full-schedule run's time (figures/summary.csv): {words!r}"
    # the full-schedule ResNet-20 repeated the 1/8 run's first rows, then moved to two threads
    short, full = (pd.read_csv(ROOT / f"results/{d}/degradation/resnet20/metrics.csv") for d in ("cpu-8k", "cpu-full"))
    columns = ["iteration", "lr", "train_loss", "train_err", "test_loss", "test_err"]
    same = int((short[columns] == full[columns].head(len(short))).all(axis=1).cummin().sum())
    assert f"first {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven'][same]} CSV rows" in speed, (
        f"docs/speed.md: {same} rows were repeated"
    )
    assert f"({full.test_loss[same]:g} vs {short.test_loss[same]:g})" in speed, "docs/speed.md: the first row apart"
    # torch.compile on the CPU: two bench runs, eager then compiled
    bench = pd.read_csv(ROOT / "results/bench/cpu-2026-12-02.csv")
    usual, eager, compiled = (bench[bench.path == p] for p in ("usual", "engine", "engine+compile"))
    assert f"from {usual.images_per_second.iloc[0]:.1f} to {usual.images_per_second.iloc[1]:.1f}" in speed
    assert f"{eager.speedup.iloc[0]:g} times the usual loop eager, {compiled.speedup.iloc[0]:g} times" in speed
    # the full-schedule plain nets' first rows, side by side
    plain = {n: pd.read_csv(ROOT / f"results/cpu-full/degradation/{n}/metrics.csv") for n in ("plain20", "plain56")}
    first = plain["plain20"].images_per_second.head(3).tolist()
    assert f"plain-20 trained at {first[0]:.1f}, {first[1]:.1f} and {first[2]:.1f} images/s" in " ".join(speed.split())
    assert f"plain-56 at {plain['plain56'].images_per_second[0]:.1f} (its first row)" in " ".join(speed.split())
    # --jobs 2's default: side by side against one process, bench --processes 2 and the one-off measurement
    sides = pd.read_csv(ROOT / "results/bench/cpu-2026-12-07.csv")
    least = sides[sides.path.str.startswith("engine 2x")].speedup.min()
    claim = f"two 1-thread runs train {round((least - 1) * 100)}-25% more images/s than one 2-thread run"
    assert "(1.25)" in speed and claim in " ".join(run.get_args_parser().format_help().split())
    resnet56 = int(re.search(r"ResNet-56 (\d+) alone", " ".join(speed.split())).group(1))
    at = f"At about {resnet56} images/s, a ResNet-56 at the paper's schedule"
    assert at in " ".join(speed.split()), "docs/speed.md: the hours below are of the one-off rate"
    for doc in ("docs/results.md", "docs/speed.md"):
        words = f"about {64_000 * 128 / resnet56 / 3600:.0f} hours"
        assert words in (ROOT / doc).read_text(), f"{doc}: a full-schedule ResNet-56 at docs/speed.md's rate: {words!r}"


def test_the_unfinished_runs_are_said_where_their_checkpoints_stand():
    """README's "Not done yet" names how far each committed full-schedule plain run got (its checkpoint's
    iteration) until it is done."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    exp_dir = ROOT / "results/cpu-full/degradation"
    for net, label in (("plain20", "plain-20"), ("plain56", "plain-56")):
        if (exp_dir / net / "checkpoint.pt").exists():  # still training
            at = rundir.load_checkpoint(exp_dir / net / "checkpoint.pt")["iteration"]
            assert f"{label} at iteration {at:,} of 64,000" in readme
        else:
            assert (exp_dir / net / "final.pt").exists(), net
            assert f"{label} at iteration" not in readme


def test_full_schedule_reading_matches_the_csvs():
    """README's and docs/results.md's reading of the full-schedule ResNet-56 against ResNet-20, from their CSVs."""
    readme, results = (" ".join((ROOT / doc).read_text().split()) for doc in ("README.md", "docs/results.md"))
    a, b = (
        docs.metrics(ROOT / f"results/cpu-full/degradation/{n}").set_index("epoch") for n in ("resnet20", "resnet56")
    )
    errs = ["train_err", "test_err"]
    gap = (a[errs] - b[errs]).round(2)  # positive where ResNet-56 is below
    for doc in (readme, results):
        assert f"ResNet-56 ends {gap.test_err.iloc[-1]:.2f} points below ResNet-20 in test error" in doc
        assert f"{gap.train_err.iloc[-1]:.2f} below in training error" in doc
    since = {c: int(gap.index[gap[c] <= 0].max()) + 1 for c in gap}  # the epoch from which ResNet-56 stays below
    assert f"below in training error at every epoch from epoch {since['train_err']} on" in results
    assert f"below in test error at every epoch from epoch {since['test_err']} on" in results
    assert f"below it in both at every epoch from epoch {max(since.values())} on" in readme
    last_above = since["train_err"] - 1
    assert (gap.train_err.loc[:last_above] < 0).all()  # above, not just not below
    assert f"at every epoch up to epoch {last_above} (iteration {a.iteration[last_above]:,})" in results
    assert a.lr[82] == 0.1 and a.lr[83] == a.lr[123] == 0.01 and a.lr[124] == 0.001  # the phases below
    for lo, hi, words in ((83, 123, "the test-error gap is {} to {} points"), (124, None, "stays between {} and {}")):
        phase = gap.test_err.loc[lo:hi]
        assert words.format(f"{phase.min():.2f}", f"{phase.max():.2f}") in results
    hours = pd.read_csv(ROOT / "figures/summary.csv").set_index("run").minutes["resnet56"] / 60
    assert f"ResNet-56 about {hours:.0f} hours" in results
    first = f"its first row: {b.test_err.iloc[0]:.2f}% test error against ResNet-20's {a.test_err.iloc[0]:.2f}%"
    last = f"({b.test_err.iloc[-1]:.2f}% vs {a.test_err.iloc[-1]:.2f}%) and {gap.train_err.iloc[-1]:.2f} below in training error ({b.train_err.iloc[-1]:.2f}% vs {a.train_err.iloc[-1]:.2f}%)"
    a8, b8 = (docs.metrics(ROOT / f"results/cpu-8k/degradation/{n}").iloc[-1] for n in ("resnet20", "resnet56"))
    short = f"ResNet-56 {b8.test_err - a8.test_err:.2f} points above in test error, {b8.train_err - a8.train_err:.2f} in training error"
    assert first in results and last in results and short in results


def test_shown_modules_exist():
    missing = {(doc, module) for doc, module, _ in shown_commands() if importlib.util.find_spec(module) is None}
    assert not missing, f"commands name modules that do not exist: {sorted(missing)}"


def test_layout_names_modules_that_exist():
    """README's tree: every folder and module it names exists where it says, every layer of the package is in
    it, and every `module.function` of the run's path is there."""
    readme = (ROOT / "README.md").read_text()
    layout = re.search(r"## Code layout\n.*?```\n(.*?)```", readme, re.S).group(1)
    found, folder = {}, None
    for line in layout.splitlines():
        if m := re.match(r"  (\w+)/\s", line):
            folder = m.group(1)
            found[folder] = ROOT / "resnet_repro" / folder
        elif re.match(r"  \w+\.py\s", line):
            folder = None
        if line.startswith("tools/"):
            folder = "../tools"
        for module in re.findall(r"(?<![\w/.-])(\w+)\.py\b", line if not line.startswith("  ") else line[2:]):
            where = ROOT / "resnet_repro" / (folder or "") / f"{module}.py"
            found[f"{folder}/{module}" if folder else module] = where
    missing = sorted(name for name, path in found.items() if not path.exists())
    assert not missing, f"README's layout names modules that do not exist: {missing}"
    layers = {p.name for p in (ROOT / "resnet_repro").iterdir() if (p / "__init__.py").exists()}
    assert layers == {"models", "data", "engine", "launch", "analysis"} and layers <= set(found)
    modules = {p.stem: p for p in (ROOT / "resnet_repro").rglob("*.py") if not p.name.startswith("__")}
    path_of_a_run = re.search(r"The path of one run.*?\n\n", readme, re.S).group(0)
    for module, attr in re.findall(r"`(\w+)\.(\w+)[(`]", path_of_a_run):
        if attr in ("csv", "pt"):
            continue
        path = modules[module].relative_to(ROOT).with_suffix("")
        assert hasattr(importlib.import_module(".".join(path.parts)), attr), f"{module}.{attr}"


def test_the_public_api_is_documented_and_imports():
    import resnet_repro

    section = (ROOT / "docs/usage.md").read_text().split("## The Python API")[1]
    documented = {name.strip("`") for line in re.findall(r"^- (.*?): ", section, re.M) for name in line.split(", ")}
    assert documented == set(resnet_repro.__all__)
    assert all(getattr(resnet_repro, name) is not None for name in resnet_repro.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        resnet_repro.nonsense  # noqa: B018


def test_shown_flags_exist():
    """Every --flag of a shown command is in that command's --help (finetune passes run's flags on)."""
    unknown = set()
    for doc, module, args in shown_commands():
        sub = args[0] if args and args[0] in SUBCOMMANDS.get(module, ()) else None
        if module in ("resnet_repro.run", "resnet_repro.analysis", "resnet_repro.bench", "resnet_repro.finetune"):
            text = help_text(module, sub) + (help_text("resnet_repro.run") if module == "resnet_repro.finetune" else "")
            for flag in {a.split("=")[0] for a in args if a.startswith("--")}:
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                    unknown.add((doc, f"python -m {module} {sub or ''}".strip(), flag))
    assert not unknown, f"flags shown in the docs that the command does not take: {sorted(unknown)}"


@pytest.mark.parametrize("path", DOCS, ids=name)
def test_links_resolve(path):
    broken = []
    for target in LINK.findall(without_fences(path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{name(path)}: links to nothing: {broken}"


def anchors(path):
    """GitHub's ids of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", without_fences(path.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("command", CHEAP, ids=lambda c: " ".join(c.split()[4:7]))
def test_cheap_commands_run(command, tmp_path, monkeypatch):
    assert any(command in p.read_text() for p in DOCS), f"no doc shows `{command}` any more: update CHEAP"
    monkeypatch.chdir(ROOT)
    module, *args = shlex.split(command)[4:]
    if CHEAP[command]:
        if "--out" in args:
            del args[args.index("--out") : args.index("--out") + 2]
        args += ["--out", str(tmp_path / "x.png" if CHEAP[command] == "png" else tmp_path)]
    code, out = python_m(module, *args)
    assert code == 0, f"`{command}` exited {code}:\n{out}"
    if "--list" in args:
        assert all(f"\n{p.stem} " in f"\n{out}" for p in (ROOT / "experiments").glob("*.toml")), out
    elif CHEAP[command] == "png":
        assert (tmp_path / "x.png").stat().st_size > 0
    else:  # the committed figures/quick/ tables are what analysis draws from the committed runs
        for table in ("summary.md", "table6.md"):
            assert (tmp_path / "quick" / table).read_text() == (ROOT / "figures/quick" / table).read_text(), table


def test_help_of_every_cli_runs():
    for module in ("run", "analysis", "bench", "finetune", "models"):
        assert "usage:" in help_text(f"resnet_repro.{module}")
    for sub in SUBCOMMANDS["resnet_repro.analysis"]:
        assert f"analysis {sub}" in help_text("resnet_repro.analysis", sub)
    tool = subprocess.run([sys.executable, ROOT / "tools" / "docs.py", "--help"], capture_output=True, text=True)
    assert tool.returncode == 0 and "usage: python tools/docs.py" in tool.stdout


@pytest.mark.parametrize("path", DOCS, ids=name)
def test_python_examples_run(path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    for code in re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M):
        exec(compile(code, f"{name(path)} example", "exec"), {})


def test_stale_block_is_named(tmp_path):
    """The check names the doc's block and its file, and the refresher rewrites it to the file."""
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures/t.md").write_text("| a |\n|---|\n| 2 |\n")
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- include: figures/t.md -->\n| a |\n|---|\n| 1 |\n<!-- end include -->\ny\n")
    assert docs.stale_blocks(doc, root=tmp_path) == ["include: figures/t.md"]
    doc.write_text(docs.refresh(doc.read_text(), root=tmp_path))
    assert doc.read_text() == "x\n<!-- include: figures/t.md -->\n| a |\n|---|\n| 2 |\n<!-- end include -->\ny\n"
    assert docs.stale_blocks(doc, root=tmp_path) == []


def test_gap_block_reads_two_runs_row_by_row(tmp_path):
    """The gap of two runs, per lr phase, on the rows both have; and from which row the first stays above."""

    def write(name, train, test, lr):
        (tmp_path / name).mkdir()
        rows = {"epoch": range(1, len(train) + 1), "iteration": [390 * (i + 1) for i in range(len(train))]}
        pd.DataFrame(rows | {"lr": lr, "train_err": train, "test_err": test}).to_csv(tmp_path / name / "metrics.csv")

    write("deep", [50, 40, 35, 30, 20], [50, 30, 36, 31, 25], [0.1, 0.1, 0.1, 0.01, 0.01])
    write("shallow", [50, 45, 30, 25, 10, 9], [45, 35, 34, 30, 26, 20], [0.1, 0.1, 0.1, 0.01, 0.01, 0.001])
    block = docs.gap(tmp_path, "deep", "shallow")
    assert "| 0.1 | 3 | 390–1,170 | +0.00 → +5.00 (-5.00 to +5.00) | +5.00 → +2.00 (-5.00 to +5.00) | 1 of 3 |" in block
    assert (
        "| 0.01 | 2 | 1,560–1,950 | +5.00 → +10.00 (+5.00 to +10.00) | +1.00 → -1.00 (-1.00 to +1.00) | 1 of 2 |"
        in block
    )
    assert "0.001" not in block and "(epochs 1–5)" in block  # the shorter run's rows only
    assert "in training error: from epoch 3 (iteration 1,170); test error: not above at the last row" in block
    write("other", [50] * 5, [50] * 5, [0.1, 0.1, 0.01, 0.01, 0.001])
    with pytest.raises(ValueError, match="not one schedule"):
        docs.gap(tmp_path, "deep", "other")


# a path that leaves the repository: up from it, or the absolute places of one machine
OUTSIDE = re.compile(r"(?<![\w.])(?:\.\./)+[^\s`'\")\],]*|(?<![\w.])(?:/work|/tmp|/home|/root|/Users|~)/[^\s`'\")\],]*")


def outside_paths(text, base=ROOT):
    """The paths in `text` that leave the repository; a relative one is read from `base` (a Markdown file's folder)."""
    found = []
    for m in OUTSIDE.finditer(text):
        path = m.group(0)
        if path.startswith("../") and (base / path).resolve().is_relative_to(ROOT):
            continue  # a link such as ../resnet_repro/... from docs/
        found.append(path)
    return found


def committed_texts():
    """(name, text, base) of what a user reads and receives: README, docs, experiment files, every --help, and
    the committed results and figures (the configs inside their .pt files too)."""
    for path in [*DOCS, *sorted((ROOT / "experiments").glob("*.toml"))]:
        yield name(path), path.read_text(), path.parent
    for module in ("run", "analysis", "bench", "finetune", "models"):
        yield f"python -m resnet_repro.{module} --help", help_text(f"resnet_repro.{module}"), ROOT
    for sub in SUBCOMMANDS["resnet_repro.analysis"]:
        yield f"python -m resnet_repro.analysis {sub} --help", help_text("resnet_repro.analysis", sub), ROOT
    for folder in ("results", "figures"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".json", ".csv", ".log", ".md", ".txt", ".svg"):
                yield name(path), path.read_text(encoding="utf-8"), ROOT
            elif path.suffix == ".pt":
                saved = files.load_tensors(path)
                yield name(path), json.dumps(saved.get("config", {}) if isinstance(saved, dict) else {}), ROOT


def test_nothing_a_user_reads_names_a_path_outside_the_repository():
    home = Path.home() / "data"  # this machine's own absolute path, whatever it is
    assert outside_paths(f"see ../../datasets/x and {home}, ~/data; ../resnet_repro/x.py", ROOT / "docs") == [
        "../../datasets/x",
        str(home),
        "~/data;",
    ]
    found = {where: paths for where, text, base in committed_texts() if (paths := outside_paths(text, base))}
    assert not found, f"paths outside the repository, which a clone does not have: {found}"
