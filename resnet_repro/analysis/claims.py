"""The paper's claims as checks on a set of runs: `claims_table(df)` gives one row per claim and group of runs,
with the paper's evidence, the runs it was checked on, the measured margin and a verdict.

A group is the runs of one planned length, one dataset and one kind (quick or not): no verdict mixes
schedules or data. In a group, a run name trained with several seeds is several runs: a claim is checked once
per seed that has every run it needs, and holds in k of those n seeds. Verdicts: "holds", "does not hold",
"mixed: holds in k of n seeds", "not run: <the runs missing or not done>", "cannot check: <why>" (Fig. 7's
claims need final.pt and the test data). Errors are the last CSV row's, in %.
"""

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from resnet_repro.analysis import inspection
from resnet_repro.analysis.figures import net_label
from resnet_repro.analysis.results import (
    DEPTH_EXPERIMENTS,
    PAPER_ITERATIONS,
    CannotDraw,
    not_done,
    preferred,
    reached,
)
from resnet_repro.analysis.tables import PAPER_TABLE2, PAPER_TABLE6, PAPER_TABLE6_MEAN
from resnet_repro.models import parse_name

COLUMNS = ["group", "id", "claim", "paper", "runs", "margin", "verdict"]
NOTE = (
    "errors in %, final = the last CSV row; a group is the runs of one planned length, dataset and kind, checked "
    "apart; a run name with several seeds counts once per seed (mixed = holds in k of n seeds); a margin is "
    "positive where the claim holds; the paper's numbers are on the original CIFAR-10 (Table 6) and ImageNet (Table 2)"
)
T6 = {depth: err for depth, (_, err) in PAPER_TABLE6.items()}
T6_MEAN = {depth: f"; best of {n}, mean {mean:.2f}±{std:.2f}" for depth, (mean, std, n) in PAPER_TABLE6_MEAN.items()}
T2 = PAPER_TABLE2  # layers: (plain, ResNet) top-1 error


@dataclass(frozen=True)
class Claim:
    id: str  # a short stable name, e.g. "degradation", "table6-20"
    claim: str  # the check, stated on the runs
    paper: str  # the paper's evidence
    runs: tuple  # the run names it needs
    check: Callable  # {name: Run} -> (holds, margin)
    prefer: tuple = DEPTH_EXPERIMENTS  # where a name that several experiments ran is taken from
    least: int = 0  # 0: needs every run of `runs`; n: any n of them
    fig7: bool = False  # needs the runs' layer responses (final.pt and the test data)


@dataclass
class Run:
    rows: pd.DataFrame  # its CSV rows, by epoch
    final: pd.Series  # the last of them
    stds: pd.Series = None  # Fig. 7's layer responses, for Fig. 7's claims


# --- checks: each returns a function {name: Run} -> (holds, margin) --------------------------------------------


def above(high, low, ten_crop=False):
    """`high` ends above `low` in training and test error; with ten_crop, the 10-crop top-1 where both have one."""

    def check(runs):
        h, lo = runs[high], runs[low]
        crops = bool(ten_crop and pd.notna([h.final.top1_err_10crop, lo.final.top1_err_10crop]).all())
        column = "top1_err_10crop" if crops else "test_err"
        d_train, d_test = h.final.train_err - lo.final.train_err, h.final[column] - lo.final[column]
        both = h.rows.merge(lo.rows, on="iteration", suffixes=("_h", "_l"))
        k = ((both.train_err_h > both.train_err_l) & (both.test_err_h > both.test_err_l)).sum()
        test = f"test{' (10-crop)' * crops}"
        margin = f"{net_label(high)} − {net_label(low)}: train {d_train:+.2f}, {test} {d_test:+.2f}"
        return bool(d_train > 0 and d_test > 0), f"{margin}; above in both at {k} of {len(both)} rows"

    return check


def overfits(deep, shallow):
    """`deep` ends above `shallow` in test error while not above it in training error."""

    def check(runs):
        d, s = runs[deep].final, runs[shallow].final
        d_test, d_train = d.test_err - s.test_err, d.train_err - s.train_err
        margin = f"{net_label(deep)} − {net_label(shallow)}: test {d_test:+.2f}, train {d_train:+.2f}"
        return bool(d_test > 0 and d_train <= 0), margin

    return check


def ordered(column, rising):
    """The final `column` rises (or falls) with depth over the runs present."""

    def check(runs):
        names = sorted(runs, key=lambda n: parse_name(n)[1])
        values = [runs[n].final[column] for n in names]
        steps = [(b > a) if rising else (b < a) for a, b in zip(values, values[1:])]
        chain = ", ".join(f"{net_label(n)} {v:.2f}" for n, v in zip(names, values))
        return all(steps), f"{sum(steps)} of {len(steps)} steps in order: {chain}"

    return check


def within(name, paper, points=1.0):
    """`name`'s final test error is within `points` of the paper's."""

    def check(runs):
        ours = runs[name].final.test_err
        return bool(abs(ours - paper) <= points), f"{ours:.2f} vs {paper:.2f}: {ours - paper:+.2f}"

    return check


def responses_below(residual, plain):
    """Fig. 7: the residual net's layer responses, sorted, below the plain net's at most positions."""

    def check(runs):
        r, p = (sorted(runs[n].stds, reverse=True) for n in (residual, plain))
        k = sum(a < b for a, b in zip(r, p))
        means = f"mean {runs[residual].stds.mean():.3f} vs {runs[plain].stds.mean():.3f}"
        return k > len(p) / 2, f"below at {k} of {len(p)} sorted positions; {means}; largest {r[0]:.2f} vs {p[0]:.2f}"

    return check


def mean_below(deep, shallow):
    """Fig. 7: the deeper ResNet's mean layer response below the shallower one's."""

    def check(runs):
        d, s = runs[deep].stds, runs[shallow].stds
        margin = (
            f"mean {d.mean():.3f} vs {s.mean():.3f} ({d.mean() - s.mean():+.3f}); largest {d.max():.2f} vs "
            f"{s.max():.2f}"
        )
        return bool(d.mean() < s.mean()), margin

    return check


PLAIN, RESNETS = (
    ("plain20", "plain32", "plain44", "plain56"),
    ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
)
DEGRADATION, TABLE2 = ("degradation", "depth"), ("imagenet18_34", "degradation18_34")
CLAIMS = [
    Claim(
        "degradation",
        "plain-56 above plain-20 in final training and test error",
        "Fig. 1, Fig. 6 left: plain-56's training and test error above plain-20's (curves only)",
        ("plain20", "plain56"),
        above("plain56", "plain20"),
        DEGRADATION,
    ),
    *[
        Claim(
            f"fix{d}",
            f"ResNet-{d} below plain-{d} in final training and test error",
            f"Fig. 6 left vs middle; Table 6: ResNet-{d} {T6[d]} test error (plain-{d}: curves only)",
            (f"plain{d}", f"resnet{d}"),
            above(f"plain{d}", f"resnet{d}"),
            DEGRADATION,
        )
        for d in (56, 20)
    ],
    *[
        Claim(
            f"depth{deep}",
            f"ResNet-{deep} below ResNet-{shallow} in final training and test error",
            f"Table 6: {T6[deep]} vs {T6[shallow]} test error; Fig. 6 middle",
            (f"resnet{shallow}", f"resnet{deep}"),
            above(f"resnet{shallow}", f"resnet{deep}"),
        )
        for shallow, deep in ((20, 56), (56, 110))
    ],
    Claim(
        "plain-depth",
        "plain nets' final training error rises with depth (20/32/44/56: those run, at least 2)",
        "Fig. 6 left: the deeper plain net has the higher training error",
        PLAIN,
        ordered("train_err", True),
        least=2,
    ),
    Claim(
        "resnet-depth",
        "ResNets' final test error falls with depth (20/32/44/56/110: those run, at least 2)",
        f"Table 6: {', '.join(str(T6[d]) for d in (20, 32, 44, 56, 110))} test error",
        RESNETS,
        ordered("test_err", False),
        least=2,
    ),
    Claim(
        "overfit1202",
        "ResNet-1202 above ResNet-110 in final test error, not above it in training error",
        f"Table 6: {T6[1202]} vs {T6[110]} test error; Fig. 6 right: similar training error (overfitting)",
        ("resnet110", "resnet1202"),
        overfits("resnet1202", "resnet110"),
        ("resnet1202", "depth", "degradation"),
    ),
    *[
        Claim(
            f"fig7-{d}",
            f"ResNet-{d}'s layer responses below plain-{d}'s at most sorted positions",
            "Fig. 7: ResNets' responses generally smaller than their plain counterparts'",
            (f"plain{d}", f"resnet{d}"),
            responses_below(f"resnet{d}", f"plain{d}"),
            DEGRADATION,
            fig7=True,
        )
        for d in (20, 56)
    ],
    *[
        Claim(
            f"fig7-depth{deep}",
            f"ResNet-{deep}'s mean layer response below ResNet-{shallow}'s",
            "Fig. 7: the deeper ResNet has smaller responses (each layer modifies the signal less)",
            (f"resnet{shallow}", f"resnet{deep}"),
            mean_below(f"resnet{deep}", f"resnet{shallow}"),
            DEGRADATION,
            fig7=True,
        )
        for shallow, deep in ((20, 56), (56, 110))
    ],
    Claim(
        "table2-plain",
        "plain-34 above plain-18 in final training and test error",
        f"Table 2: {T2[34][0]} vs {T2[18][0]} top-1 (ImageNet val, 10-crop); Fig. 4 left: higher training error",
        ("plain18", "plain34"),
        above("plain34", "plain18", ten_crop=True),
        TABLE2,
    ),
    Claim(
        "table2-resnet",
        "ResNet-34 below ResNet-18 in final training and test error",
        f"Table 2: {T2[34][1]} vs {T2[18][1]} top-1 (ImageNet val, 10-crop); Fig. 4 right",
        ("resnet18", "resnet34"),
        above("resnet18", "resnet34", ten_crop=True),
        TABLE2,
    ),
    Claim(
        "table2-fix",
        "ResNet-34 below plain-34 in final training and test error",
        f"Table 2: {T2[34][1]} vs {T2[34][0]} top-1 (ImageNet val, 10-crop); Fig. 4",
        ("plain34", "resnet34"),
        above("plain34", "resnet34", ten_crop=True),
        TABLE2,
    ),
    *[
        Claim(
            f"table6-{d}",
            f"ResNet-{d}'s final test error within 1 point of the paper's",
            f"Table 6: {err} test error (original CIFAR-10{T6_MEAN.get(d, '')})",
            (f"resnet{d}",),
            within(f"resnet{d}", err),
            ("resnet1202",) * (d == 1202) + DEPTH_EXPERIMENTS,
        )
        for d, err in T6.items()
    ],
]


# --- the table -------------------------------------------------------------------------------------------------


def claims_table(df, fig7=True, device=None, responses=None, checked=None):
    """One row per group of runs (see the module doc) and claim: COLUMNS, with attrs["note"] (tables.to_markdown
    renders it) and attrs["groups"] (each group's run directories and fig7). CannotDraw without any run.
    fig7=False leaves Fig. 7's claims unchecked; responses: run directory -> Series of its layer responses
    (default: inspection.run_response_std on `device`, kept in each run's measures.json, each test set loaded
    once). checked: a claims table of these runs or more; its rows of a group of the same run directories,
    checked with the same fig7, are taken as they are instead of checking the group again."""
    if df.empty:
        raise CannotDraw("missing: any run")
    if responses is None:
        images = {}
        responses = lambda run_dir: inspection.run_response_std(run_dir, device, images)  # noqa: E731
    rows, checked_groups = [], {}
    for label, group in groups(df):
        checked_groups[label] = (tuple(sorted(group.path.unique())), fig7)
        if checked is not None and checked.attrs.get("groups", {}).get(label) == checked_groups[label]:
            rows += checked[checked.group == label].to_dict("records")
            continue
        for claim in CLAIMS:
            found = check(claim, group, responses if fig7 else None)
            rows.append({"group": label, "id": claim.id, "claim": claim.claim, "paper": claim.paper, **found})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs |= {"note": NOTE, "groups": checked_groups}
    return table


def groups(df):
    """(label, runs) per planned length, dataset and kind (quick or not): the paper's setting first."""
    found = list(df.groupby(["quick", "planned_iterations", "dataset"], dropna=False))
    found.sort(key=lambda kg: (bool(kg[0][0]), -(kg[0][1] if pd.notna(kg[0][1]) else 0), str(kg[0][2])))
    return [(group_label(group), group) for _, group in found]


def group_label(group):
    first = group.iloc[0]
    planned, quick = first.planned_iterations, bool(first.quick)
    length = f"{planned:,} iterations" if pd.notna(planned) else "planned length not recorded"
    paper = set(group.experiment.map(PAPER_ITERATIONS).dropna())
    if not quick and pd.notna(planned) and len(paper) == 1:
        p = paper.pop()
        length += " (the paper's)" if planned == p else f" (1/{p / planned:.3g} of the paper's {p:,.0f})"
    return f"{'quick: ' if quick else ''}{first.dataset if pd.notna(first.dataset) else 'data not recorded'}, {length}"


def check(claim, group, responses):
    """{"runs", "margin", "verdict"} of one claim on one group; responses None: Fig. 7 not computed."""
    by_seed, also = pick(claim, group)
    units, missing, cannot, done_any = {}, {}, [], set()
    for seed, paths in by_seed.items():
        late = {n: not_done(group[group.path == p]) for n, p in paths.items()}
        done = {n: p for n, p in paths.items() if late[n].empty}
        done_any |= set(done)
        lacking = [n for n in claim.runs if n not in done]
        if (len(done) < claim.least) if claim.least else lacking:
            missing[seed] = [n if n not in paths else f"{n} (not done: {how_far(late[n])})" for n in lacking]
            continue
        runs = {n: group[group.path == p].sort_values("epoch") for n, p in done.items()}
        runs = {n: Run(rows, rows.iloc[-1]) for n, rows in runs.items()}
        if claim.fig7:
            try:
                if responses is None:
                    raise CannotDraw("Fig. 7 not computed (--no-fig7)")
                for n, run in runs.items():
                    run.stds = responses(done[n])
            except CannotDraw as e:
                cannot.append(str(e))
                continue
        units[seed] = (done, claim.check(runs))
    return {
        "runs": describe_runs(group, {s: u[0] for s, u in units.items()} or by_seed, also),
        "margin": "; ".join(f"{seed_label(s)}: {m}" if len(units) > 1 else m for s, (_, (_, m)) in units.items())
        or "—",
        "verdict": verdict([held for _, (held, _) in units.values()], missing, cannot, claim, done_any),
    }


def pick(claim, group):
    """({seed: {name: run directory}}, [run directories left out]) for the claim's run names in the group: a name
    several experiments ran is taken from the first of claim.prefer (results.preferred); of two equally preferred,
    the first path."""
    by_seed, also = {}, []
    for name in claim.runs:
        rows = group[group.run == name]
        for seed, runs in rows.groupby(rows.seed.astype(object).where(rows.seed.notna(), None), dropna=False):
            first, *others = preferred(runs, name, claim.prefer).path
            by_seed.setdefault(seed, {})[name] = first
            also += others
    return dict(sorted(by_seed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))), also


def how_far(late):
    """The state and progress of a run directory not done, from its row of results.not_done: "stopped at
    iteration 1,564 of 64,000"."""
    last = late.iloc[0]
    return f"{last.state} at {reached(last)}"


def seed_label(seed):
    return "seed not recorded" if seed is None else f"seed {seed}"


def describe_runs(group, by_seed, also):
    """The runs a claim was checked on: names with their experiments, and the seeds."""
    experiment = {n: group[group.path == p].experiment.iloc[0] for paths in by_seed.values() for n, p in paths.items()}
    if not experiment:
        return "—"
    names = sorted(experiment, key=lambda n: (parse_name(n)[1], n))
    if len(set(experiment.values())) == 1:
        text = f"{', '.join(names)} ({experiment[names[0]]})"
    else:
        text = ", ".join(f"{n} ({experiment[n]})" for n in names)
    seeds = ["not recorded" if s is None else str(s) for s in by_seed]
    text += f"; seed{'s' * (len(seeds) > 1)} {', '.join(seeds)}"
    return text + (f"; also found, not used: {', '.join(also)}" if also else "")


def verdict(held, missing, cannot, claim, done):
    """The verdict from whether the claim held in each seed checked (held), the runs that kept the other seeds out
    ({seed: [runs]}), why Fig. 7 could not be computed (cannot) and the claim's runs done in any seed."""
    k, n = sum(held), len(held)
    if not n and cannot:
        return f"cannot check: {'; '.join(dict.fromkeys(cannot))}"
    if not n and claim.least:
        has = [r for r in claim.runs if r in done]
        late = [r for runs in missing.values() for r in runs if "(not done" in r]
        return (
            f"not run: needs {claim.least} of {', '.join(claim.runs)}"
            + (f"; has {', '.join(has)}" if has else "")
            + (f"; {', '.join(dict.fromkeys(late))}" if late else "")
        )
    if not n:
        return f"not run: {', '.join(dict.fromkeys(r for runs in missing.values() for r in runs) or claim.runs)}"
    text = "holds" if k == n else "does not hold" if k == 0 else f"mixed: holds in {k} of {n} seeds"
    unchecked = [f"{seed_label(s)} lacks {', '.join(runs)}" for s, runs in missing.items()] + list(
        dict.fromkeys(cannot)
    )
    return text + (f" (not checked: {'; '.join(unchecked)})" if unchecked else "")
