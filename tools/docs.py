"""python tools/docs.py: rewrite the derived blocks of README.md and docs/*.md.

A number in a table of the docs is never typed: it sits in a block between two markers, and this
module writes the block from the committed files (tests/test_docs.py fails when one differs):

    <!-- include: figures/8000-iterations/summary.md -->     the file, as it is
    <!-- end include -->
    <!-- generated: claims figures/8000-iterations/claims.csv -->    GENERATORS["claims"](root, *args)
    <!-- end generated -->

So after `analysis` redraws figures/, one command brings the docs up to date.
"""

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from resnet_repro import config, files
from resnet_repro.analysis.results import PAPER_ITERATIONS, load_runs
from resnet_repro.analysis.results import compare as compare_sets
from resnet_repro.analysis.tables import SPREAD, seeds_table, to_markdown
from resnet_repro.models import CIFAR_DEPTHS, build_model, input_size, multiply_adds, num_params, weighted_layers

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- (include|generated): (.+?) -->\n(.*?)<!-- end \1 -->", re.S)
SLOW = ("models",)  # counts multiply-adds of every net: a minute on 2 busy cores (the tests check its params)
# training FLOPs ~ 3 x forward (2 x mult-adds) per image x 64k iterations x 128, plus the test pass of
# 10,000 images after each of the 164 epochs: the GPU estimate's FLOPs per multiply-add of a CIFAR run
FLOPS_PER_MULT_ADD = 2 * (3 * PAPER_ITERATIONS["depth"] * 128 + 164 * 10_000)
ASSUMED_FLOPS = 5e12  # an assumed sustained rate (FLOP/s), not a measured one


def doc_paths(root=ROOT):
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def table(header, rows):
    """A Markdown table (tables.to_markdown) of rows of cells written out already."""
    return to_markdown(pd.DataFrame(list(rows), columns=list(header), dtype=object)).rstrip("\n")


def metrics(run_dir):
    return pd.read_csv(Path(run_dir) / "metrics.csv")


def include(root, path):
    return (root / path).read_text().strip()


def experiments(root):
    """Every experiments/*.toml as config resolves it: runs, what it reproduces, the recipe of its first run,
    and what another run changes (beyond its model)."""
    rows = []
    for name in config.available():  # experiments/ of this package, whatever root is
        exp = config.load_experiment(name)
        first, *others = exp.runs.values()
        recipe = f"`{first.data}`, batch {first.batch_size}, lr {lr_words(first, short=True)}"
        recipe += f"; stop at {first.iterations / 1000:g}k" + (f"; {warmup(first)}" if first.warmup_lr else "")
        base = asdict(first)
        for spec in others:
            changes = {k: v for k, v in asdict(spec).items() if v != base[k] and k not in ("model", "depth")}
            words = [warmup(spec) if k == "warmup_lr" else f"{k} {v}" for k, v in changes.items()]
            recipe += f"; {spec.model}: {', '.join(words)}" if words else ""
        rows.append((f"`{name}`", ", ".join(exp.runs), exp.description, recipe))
    return table(("experiment", "runs", "what", "recipe"), rows)


def lr_words(spec, short=False):
    """The lr schedule of a spec in words: "0.1 ÷10 at 32k, 48k" (short) or "0.1, ÷10 at 32,000, 48,000"."""
    if spec.schedule == "linear":
        return f"{spec.lr:g}" + (f" after a ramp of {spec.ramp}" if spec.ramp else "") + ", linear to 0"
    fall = f"÷{1 / spec.lr_decay:g}"
    if spec.schedule == "plateau":
        rows = f"{spec.plateau_patience} row{'s' * (spec.plateau_patience > 1)}"
        return f"{spec.lr:g}, {fall} once {spec.plateau_on} stalls for {rows} (at most {spec.plateau_drops} times)"
    at = (f"{m / 1000:g}k" if short else f"{m:,}" for m in spec.milestones)
    return f"{spec.lr:g}{'' if short else ','} {fall} at {', '.join(at)}"


def warmup(spec):
    return f"warm-up at lr {spec.warmup_lr:g} until training error < {spec.warmup_until_err:g}%"


def claims(root, csv, ids=""):
    """The claims `analysis claims` checked (claims.csv): verdict and margin, without those not run; `ids`:
    only these (comma-separated claim ids)."""
    df = pd.read_csv(root / csv)
    df = df[~df.verdict.str.startswith(("not run", "cannot check"))]
    df = df[df.id.isin(ids.split(","))] if ids else df
    several = df.group.nunique() > 1
    header = (("runs",) if several else ()) + ("claim", "margin", "verdict")
    rows = [
        ((g,) if several else ()) + (c, m, f"**{v}**") for g, c, m, v in zip(df.group, df.claim, df.margin, df.verdict)
    ]
    return table(header, rows)


def seeds(root, exp_dir):
    """Mean ± std (n) of each run's final errors over its seeds (tables.seeds_table)."""
    table = seeds_table(load_runs(root / exp_dir))
    columns = ["run", "seeds", *(f"{c}{std}" for c in SPREAD for std in ("", "_std")), "n"]
    return to_markdown(table[columns]).strip()


def evaluations(root, csv, normalize):
    """`analysis evaluate`'s rows (evaluations.csv) of the weights evaluated with one normalization, by their path."""
    df = pd.read_csv(root / csv)
    df = df[df.normalize == normalize].sort_values("weights", kind="stable")
    shown = lambda w: f"[`{w.rsplit('/', 1)[-1]}`]({w})" if "://" in w else f"`{w}`"  # a URL: its file name, linked
    rows = [
        (shown(w), m, d, f"{e:.2f}", f"{t:.2f}")
        for w, m, d, e, t in zip(df.weights, df.model, df.dataset, df.test_err, df.top5_err)
    ]
    return table(("weights", "net", "test data", "test error (%)", "top-5 error (%)"), rows)


def side_by_side(root, csv):
    """`bench --processes N`'s rows (a bench CSV): per net, one process on all threads against N at once."""
    df = pd.read_csv(root / csv)
    df = df[df.path.str.match(r"engine \d+x\d+ threads")]
    rows = []
    for model, runs in df.groupby("model", sort=False):
        (alone, one), (together, many) = zip(runs.images_per_second, runs.path)
        rows.append(
            (
                model,
                f"{alone:.0f} images/s ({one.removeprefix('engine ')})",
                f"{together:.0f} images/s ({many.removeprefix('engine ')})",
                f"{together / alone:.2f}",
            )
        )
    return table(("net", "1 process", "side by side (summed)", "ratio"), rows)


def fig7(root, csv):
    """Fig. 7's reading: each run's layer-response stds sorted by size, compared position by position."""
    df = pd.read_csv(root / csv)
    stds = {run: np.sort(g["std"].to_numpy())[::-1] for run, g in df.groupby("run")}
    rows = []
    for first, second in (("resnet20", "plain20"), ("resnet56", "plain56"), ("resnet56", "resnet20")):
        if first not in stds or second not in stds:
            continue
        a, b = stds[first], stds[second]
        below = f"{int((a < b).sum())} of {len(a)}" if len(a) == len(b) else "—"
        rows.append(
            (f"{first} vs {second}", below, f"{a.mean():.2f} vs {b.mean():.2f}", f"{a.max():.2f} vs {b.max():.2f}")
        )
    return table(("runs", "positions where the first is below, sorted by size", "mean std", "largest std"), rows)


def phases(root, run_dir):
    """One row per learning rate of a step schedule: where training and test error go in that phase."""
    df = metrics(root / run_dir)
    rows = []
    for lr, p in df.groupby("lr", sort=False):
        late = p.iloc[len(p) // 2 :]
        rows.append(
            (
                f"{lr:g}",
                len(p),
                f"{p.iteration.iloc[0]:,}–{p.iteration.iloc[-1]:,}",
                f"{p.train_err.iloc[0]:.2f} → {p.train_err.iloc[-1]:.2f}",
                f"{p.test_err.iloc[0]:.2f} → {p.test_err.iloc[-1]:.2f}",
                f"{late.test_err.min():.2f}–{late.test_err.max():.2f}",
            )
        )
    header = (
        "lr",
        "rows",
        "iterations",
        "train err: first → last row",
        "test err: first → last row",
        "test err, 2nd half: min–max",
    )
    return table(header, rows)


def gap(root, high, low):
    """Two runs of one schedule row by row (matched by epoch, up to the shorter one's last), per learning rate:
    how far `high` is above `low` in training and test error, in points, and from which row on it stays above."""
    a, b = (metrics(root / d).set_index("epoch") for d in (high, low))
    epochs = a.index.intersection(b.index)
    a, b = a.loc[epochs], b.loc[epochs]
    if not (a.lr == b.lr).all() or not (a.iteration == b.iteration).all():
        raise ValueError(f"{high} and {low}: not one schedule, row by row")
    d = a[["train_err", "test_err"]] - b[["train_err", "test_err"]]
    rows = []
    for lr, p in d.groupby(a.lr, sort=False):
        span = a.iteration.loc[p.index]
        rows.append(
            (
                f"{lr:g}",
                len(p),
                f"{span.iloc[0]:,}–{span.iloc[-1]:,}",
                *(f"{p[c].iloc[0]:+.2f} → {p[c].iloc[-1]:+.2f} ({p[c].min():+.2f} to {p[c].max():+.2f})" for c in d),
                f"{((p.train_err > 0) & (p.test_err > 0)).sum()} of {len(p)}",
            )
        )
    name_a, name_b = Path(high).name, Path(low).name
    header = (
        "lr",
        "rows",
        "iterations",
        "train err gap: first → last (min to max)",
        "test err gap: first → last (min to max)",
    )
    stays = []
    for column, words in (("train_err", "training error"), ("test_err", "test error")):
        below = d.index[d[column] <= 0]
        if len(below) and below.max() == d.index[-1]:
            stays.append(f"{words}: not above at the last row")
        else:
            since = d.index[d.index > below.max()][0] if len(below) else d.index[0]
            stays.append(f"{words}: from epoch {since} (iteration {a.iteration[since]:,})")
    note = (
        f"gap = {name_a} − {name_b} in points of error, on the rows both have (epochs {d.index[0]}–{d.index[-1]}). "
        f"{name_a} stays above {name_b} in {'; '.join(stays)}"
    )
    return table((*header, f"rows {name_a} above in both"), rows) + f"\n\n{note}"


def last_rows(root, run_dir, n):
    df = metrics(root / run_dir).tail(int(n))
    rows = [
        (f"{r.epoch:g}", f"{r.iteration:,}", f"{r.lr:g}", f"{r.train_err:.2f}", f"{r.test_err:.2f}")
        for r in df.itertuples()
    ]
    return table(("epoch", "iteration", "lr", "train_err", "test_err"), rows)


def compare(root, a, b):
    """resnet_repro.analysis.results.compare(a, b): final errors of the runs of two result sets, matched by name."""
    df = compare_sets(root / a, root / b)
    metrics_ = ("final_train_err", "final_test_err", "iterations")
    rows = [
        (
            r["run"],
            *(f"{r[f'{m}_{s}']:.2f}" if m != "iterations" else f"{r[f'{m}_{s}']:,.0f}" for m in metrics_ for s in "ab"),
        )
        for _, r in df.iterrows()
    ]
    header = ["run"] + [f"{m}_{s}" for m in metrics_ for s in "ab"]
    return table(header, rows) + f"\n\na = `{a}`, b = `{b}`"


def depth(root, csv, experiment):
    """A summary.csv's final training error of one experiment, as plain/ResNet against depth."""
    df = pd.read_csv(root / csv)
    df = df[df.experiment == experiment]
    family = df.run.str.extract(r"^([a-z]+)(\d+)$")
    df = df.assign(family=family[0].map({"plain": "plain", "resnet": "ResNet"}), depth=family[1].astype(int))
    pivot = df.pivot(index="family", columns="depth", values="final_train_err")
    rows = [(f, *(f"{v:.2f}" for v in pivot.loc[f])) for f in ("plain", "ResNet")]
    return table(("final train err", *map(str, pivot.columns)), rows)


def lr_ramp(root, ramp_dir, constant_dir):
    """Training error of the constant-lr run at its last row, beside the ramped run's row at or just before it."""
    const = metrics(root / constant_dir).iloc[-1]
    ramp = metrics(root / ramp_dir)
    ramp = ramp[ramp.iteration <= const.iteration].iloc[-1]
    rows = [(f"`{ramp_dir}`", "ramp, then linear decay", f"{ramp.iteration:,}", f"{ramp.train_err:.2f}")]
    rows += [(f"`{constant_dir}`", f"constant {const.lr:g}", f"{const.iteration:,}", f"{const.train_err:.2f}")]
    return table(("run", "lr", "iteration", "train_err"), rows)


def provenance(root, exp_dir):
    """Each run's config.json: its recipe, and where and when it started (a resumed run keeps these)."""
    rows, datasets, devices = [], set(), set()
    for path in sorted((root / exp_dir).glob("*/config.json")):
        c = json.loads(path.read_text())
        datasets.add(c["dataset"])
        devices.add(c["device"])
        rows.append(
            (
                c["run"],
                f"{c['iterations']:,}",
                c["batch_size"],
                lr_words(config.spec_from_config(c)),
                c["seed"],
                c["threads"],
                c["torch"],
                f"`{c['commit']}`",
            )
        )
    header = ("run", "iterations", "batch", "lr", "seed", "threads at start", "torch", "started at commit")
    return table(header, rows) + f"\n\ndata: {', '.join(sorted(datasets))}; device: {', '.join(sorted(devices))}"


def models(root):
    """Layers, parameters and multiply-adds of the paper's nets; for CIFAR nets, the GPU estimate."""
    rows = []
    imagenet_nets = ("resnet18", "resnet34", "resnet50")
    for net in [f"resnet{d}" for d in CIFAR_DEPTHS] + list(imagenet_nets):
        imagenet = net in imagenet_nets
        model = build_model(net, num_classes=1000 if imagenet else 10)
        macs = multiply_adds(model, input_size(net))
        if imagenet:
            label, hours = f"{net} (1000 classes)", "—"
        else:  # a plain net is its residual twin without the additions: the same parameters and mult-adds
            assert num_params(build_model(net.replace("resnet", "plain"))) == num_params(model)
            label, hours = (
                f"{net.replace('resnet', 'plain')} / {net}",
                f"{macs * FLOPS_PER_MULT_ADD / ASSUMED_FLOPS / 3600:.2f}",
            )
        rows.append((label, weighted_layers(model), f"{num_params(model):,}", mult_adds(macs), hours))
    return table(("name", "layers", "params", "mult-adds", "GPU-hours at 5 TFLOP/s (estimate)"), rows)


def mult_adds(n):
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M"


GENERATORS = {
    "experiments": experiments,
    "claims": claims,
    "evaluations": evaluations,
    "seeds": seeds,
    "fig7": fig7,
    "side-by-side": side_by_side,
    "phases": phases,
    "last-rows": last_rows,
    "gap": gap,
    "compare": compare,
    "depth": depth,
    "lr-ramp": lr_ramp,
    "provenance": provenance,
    "models": models,
}


def render(kind, spec, root=ROOT):
    """The content a block `<!-- kind: spec -->` must hold."""
    if kind == "include":
        return include(root, spec)
    name, *args = spec.split()
    return GENERATORS[name](root, *args)


def refresh(text, root=ROOT, skip=()):
    """text with every block rewritten (blocks of generators in `skip` kept as they are)."""

    def fill(m):
        kind, spec, body = m.groups()
        if kind == "generated" and spec.split()[0] in skip:
            return m.group(0)
        return f"<!-- {kind}: {spec} -->\n{render(kind, spec, root)}\n<!-- end {kind} -->"

    return BLOCK.sub(fill, text)


def stale_blocks(path, root=ROOT, skip=SLOW):
    """The blocks of the doc at `path` that differ from their sources, as `kind: spec` strings."""
    stale = []
    for m in BLOCK.finditer(Path(path).read_text()):
        kind, spec, body = m.groups()
        if kind == "generated" and spec.split()[0] in skip:
            continue
        if body != render(kind, spec, root) + "\n":
            stale.append(f"{kind}: {spec}")
    return stale


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python tools/docs.py",
        description="Rewrite the blocks of README.md and docs/*.md that are derived from figures/, results/ "
        "and experiments/ (between <!-- include: FILE --> or <!-- generated: NAME ARGS --> and its end marker).",
    )
    parser.add_argument("--check", action="store_true", help="only list stale blocks; exit 1 if there are any")
    parser.add_argument("--skip", default="", help=f"comma-separated generators to leave as they are, e.g. {SLOW[0]}")
    args = parser.parse_args(argv)
    skip = tuple(s for s in args.skip.split(",") if s)
    stale = 0
    for path in doc_paths():
        blocks = stale_blocks(path, skip=skip)
        stale += len(blocks)
        for block in blocks:
            print(f"{path.relative_to(ROOT)}: {block}")
        if blocks and not args.check:
            files.write_text(path, refresh(path.read_text(encoding="utf-8"), skip=skip))
    print(f"{stale} stale block(s){'' if args.check else ' rewritten'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    files.utf8_console()
    sys.exit(main())
