"""python -m resnet_repro.analysis: draw the paper's figures and tables from results/ (and `compare`,
`predictions`, `claims`, `evaluate`). For pandas: `from resnet_repro.analysis import load_runs, final_metrics,
compare, draw, claims_table`.

- `draw(paths, out_dir)`: every figure and table the runs allow, as PNG, PDF, Markdown and CSV. Within one
  drawing each run name must belong to one run directory; quick runs (config `quick`) are drawn apart,
  into `out_dir/quick`.
- `claims_table(df)`: the paper's claims checked on the runs, a verdict each (resnet_repro.analysis.claims); `draw` and
  `claims` write it as claims.md and claims.csv.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from resnet_repro import files
from resnet_repro.analysis import evaluation, figures, inspection
from resnet_repro.analysis.claims import claims_table
from resnet_repro.analysis.results import CannotDraw, compare, final_metrics, load_runs, shorter_than_paper, title_of
from resnet_repro.analysis.tables import plain_vs_residual, summary_table, table2, table6, to_markdown
from resnet_repro.engine.devices import device_error

__all__ = ["load_runs", "final_metrics", "compare", "draw", "claims_table", "main"]

FIGURES = ("fig1", "fig4", "fig6", "fig7", "depth")
TABLES = {"table6": table6, "plain_vs_residual": plain_vs_residual, "table2": table2, "summary": summary_table}
FIGURE_RUNS = {
    "fig4": [n for p in figures.FIG4_PANELS for n in p],
    "fig6": list(dict.fromkeys(n for p in figures.FIG6_PANELS for n in p)),
}


def draw(paths, out_dir="figures", fig7=True, device=None, claims=None):
    """Draw every figure and table the runs allow into out_dir (`<name>.png/.pdf`, `<table>.md/.csv`).

    paths: a path, a list of paths (see load_runs) or a frame from load_runs. Quick runs go to
    out_dir/quick, with keys "quick/<name>", and runs set shorter than the paper's schedule to
    out_dir/<N>-iterations ("8000-iterations/<name>"). Returns {name: [written paths]} for what was
    drawn and {name: "missing: ..."} (or "ambiguous: ...", "skipped") for the rest; prints both.
    fig7=False skips Fig. 7, which loads final.pt and the test set. device: for Fig. 7 (default cuda if any).
    claims: claims_table of these runs where the caller has it (claims.md takes its rows, see claims_table).
    """
    df = (
        paths if isinstance(paths, pd.DataFrame) else load_runs(*([paths] if isinstance(paths, (str, Path)) else paths))
    )
    result = {}
    for prefix, subset, folder in _result_sets(df, Path(out_dir)):
        result |= _draw_set(subset, folder, fig7, device, prefix, claims)
    return result


def _result_sets(df, out_dir):
    """(prefix, runs, folder): runs at the paper's schedule into out_dir; runs set shorter than it apart, one
    folder per length (out_dir/8000-iterations), so that a figure never mixes lengths; quick runs, not the
    paper's setting, apart into out_dir/quick."""
    short = shorter_than_paper(df)
    planned = df.planned_iterations.where(short)
    full = ~df.quick & ~short
    sets = [("", df[full], out_dir)] if df.empty or full.any() else []
    for n in sorted(planned.dropna().unique()):
        sets.append((f"{n}-iterations/", df[planned == n], out_dir / f"{n}-iterations"))
    return sets + ([("quick/", df[df.quick], out_dir / "quick")] if df.quick.any() else [])


def _draw_set(df, out_dir, with_fig7, device, prefix, checked=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    result, absent, images = {}, {}, {}  # images: each test set loaded once, for Fig. 7 and its claims
    for name in FIGURES:
        try:
            if name == "fig7" and not with_fig7:
                result[name] = "skipped"
            else:
                result[name], absent[name] = _save_figure(name, df, out_dir, device, images)
        except CannotDraw as e:
            result[name] = str(e)
    responses = lambda run_dir: inspection.run_response_std(run_dir, device, images)  # noqa: E731
    for name, make in (TABLES | {"claims": lambda d: claims_table(d, with_fig7, device, responses, checked)}).items():
        try:
            result[name] = _write_table(make(df), out_dir, name)
        except CannotDraw as e:
            result[name] = str(e)
    for name, value in result.items():
        if isinstance(value, list):
            without = f" (without {', '.join(absent[name])})" if absent.get(name) else ""
            print(f"{prefix}{name}: {', '.join(map(str, value))}{without}")
        else:
            print(f"{prefix}{name}: {'' if value == 'skipped' else 'not drawn, '}{value}")
    return {prefix + name: value for name, value in result.items()}


def _write_table(table, out_dir, name):
    files.write_text(out_dir / f"{name}.csv", table.to_csv(index=False))
    files.write_text(out_dir / f"{name}.md", to_markdown(table))
    return [out_dir / f"{name}.md", out_dir / f"{name}.csv"]


def _save_figure(name, df, out_dir, device, images):
    """Draw and save one figure; returns (written paths, the figure's runs it was drawn without)."""
    written = []
    if name == "fig7":
        stds = inspection.response_stds(df, device, images=images)
        fig = inspection.fig7(stds, title_of(df[df.run.isin(list(stds))]))
        rows = [(run, i + 1, module, s) for run, values in stds.items() for i, (module, s) in enumerate(values.items())]
        files.write_text(
            out_dir / "fig7.csv", pd.DataFrame(rows, columns=["run", "layer", "module", "std"]).to_csv(index=False)
        )
        written.append(out_dir / "fig7.csv")
        absent = [n for n in inspection.FIG7_RUNS if n not in stds]
    else:
        fig = {"fig1": figures.fig1, "fig4": figures.fig4, "fig6": figures.fig6, "depth": figures.fig_depth}[name](df)
        absent = [n for n in FIGURE_RUNS.get(name, []) if n not in set(df.run)]
    for suffix in (".png", ".pdf"):
        files.save_figure(
            fig, out_dir / f"{name}{suffix}", dpi=150, metadata={"CreationDate": None} if suffix == ".pdf" else None
        )  # same runs, same bytes
        written.append(out_dir / f"{name}{suffix}")
    return written, absent


EXAMPLES = """examples:
  uv run python -m resnet_repro.analysis                          # everything under results/ -> figures/
  uv run python -m resnet_repro.analysis results/degradation --out figures/
  uv run python -m resnet_repro.analysis results/degradation-quick --no-fig7     # quick runs: figures/quick/
  uv run python -m resnet_repro.analysis predictions results/degradation/resnet56   # its predictions on 32 test images
  uv run python -m resnet_repro.analysis compare results/cpu-demo/degradation-quick results/cpu-8k/degradation
  uv run python -m resnet_repro.analysis claims results/cpu-8k     # the paper's claims, checked on these runs
  uv run python -m resnet_repro.analysis evaluate results/cpu-8k/degradation/resnet20/final.pt

Figures (PNG and PDF): fig1 (plain-20 vs plain-56), fig6 (plain, ResNet, ResNet-110/1202),
fig4 (18 vs 34 layers), fig7 (std of layer responses, needs final.pt and the test data), depth
(final error against depth). Tables (Markdown and CSV): table6, plain_vs_residual (plain-20/56 and
ResNet-20/56 beside the paper and a public 5-seed reproduction), table2, summary, claims (the
paper's claims with a verdict each: see `claims --help`). Fig. 7's responses are kept in each
run's measures.json, so a second drawing reads them.
A figure whose runs are missing is listed with their names. Quick runs (config "quick") are
always drawn apart, into <out>/quick, and runs set shorter than the paper's schedule (--iterations)
apart by length, into <out>/<N>-iterations: a figure never mixes lengths.
`predictions RUN_DIR` draws one finished run's predictions instead (see `predictions --help`);
`compare A B ...` draws the error curves of several result folders together (see `compare --help`);
`evaluate WEIGHTS` scores weights on a test set (see `evaluate --help`).
"""


CLAIMS_EXAMPLES = """examples:
  uv run python -m resnet_repro.analysis claims results/cpu-8k results/cpu-full
  uv run python -m resnet_repro.analysis claims results/cpu-demo --no-fig7

One row per claim of the paper (degradation, the residual fix, depth, overfitting at 1202 layers,
Fig. 7, Table 2's 18/34 pair, Table 6's numbers): the paper's evidence, the runs checked, the margin
and a verdict: holds, does not hold, mixed (holds in k of n seeds), not run (the runs missing),
cannot check (why). Runs are checked in groups of one planned length, dataset and kind (quick or
not), never mixed. Written to claims.md and claims.csv where `analysis` puts the other tables:
<out>, <out>/<N>-iterations, <out>/quick. Fig. 7's claims need final.pt and the test data
(responses kept in measures.json); --no-fig7 leaves them unchecked.
"""


def _parser(command, description, epilog=None):
    prog = f"python -m resnet_repro.analysis {command}".strip()
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["predictions"]:
        return inspection.predictions_main(argv[1:])
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    if argv[:1] == ["claims"]:
        return claims_main(argv[1:])
    if argv[:1] == ["evaluate"]:
        return evaluation.main(argv[1:])
    parser = _parser(
        "",
        "Draw the paper's figures and tables from training results (results/<experiment>/<run>/metrics.csv).",
        EXAMPLES,
    )
    df, args = _load(parser, argv)
    try:
        draw(df, args.out, fig7=not args.no_fig7, device=args.device)
    except (OSError, files.DiskFull) as e:  # a full or read-only disk: every file written whole or not at all
        parser.exit(2, f"error: cannot write into {args.out}: {getattr(e, 'strerror', None) or e}\n")
    for prefix, subset, _ in _result_sets(df, args.out):
        try:
            print(f"\n{prefix}summary:\n{to_markdown(summary_table(subset))}", end="")
        except CannotDraw as e:
            print(f"\n{prefix}summary: not shown, {e}")
    return 0


def _load(parser, argv):
    """(runs, args) of a command that reads RESULTS... and writes into --out; exits with a one-line error."""
    parser.add_argument(
        "results",
        nargs="*",
        default=["results"],
        metavar="RESULTS",
        help="results root, experiment or run directories, searched recursively (default: results)",
    )
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output directory (default: figures)")
    parser.add_argument("--no-fig7", action="store_true", help="skip Fig. 7 (it loads final.pt and the test set)")
    parser.add_argument("--device", help="device for Fig. 7's forward passes (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    if args.device and (error := device_error(args.device)):
        parser.exit(2, f"error: {error}\n")
    if args.out.exists() and not args.out.is_dir():
        parser.exit(2, f"error: --out {args.out} is a file; it must be a directory (or not exist yet)\n")
    try:
        df = load_runs(*args.results)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    if df.empty:
        parser.exit(1, f"no runs (metrics.csv with at least one epoch) under {', '.join(args.results)}\n")
    return df, args


def claims_main(argv=None):
    parser = _parser(
        "claims",
        "The paper's claims checked on training results, one verdict per claim and group of runs.",
        CLAIMS_EXAMPLES,
    )
    df, args = _load(parser, argv)
    images = {}  # each test set loaded once
    responses = lambda run_dir: inspection.run_response_std(run_dir, args.device, images)  # noqa: E731
    for prefix, subset, folder in _result_sets(df, args.out):
        folder.mkdir(parents=True, exist_ok=True)
        table = claims_table(subset, not args.no_fig7, args.device, responses)
        written = _write_table(table, folder, "claims")
        print(f"{prefix}claims: {', '.join(map(str, written))}\n\n{to_markdown(table)}")
    return 0


def compare_main(argv=None):
    parser = _parser(
        "compare",
        "Error curves of several result folders in one figure (colour: net, line style: folder), "
        "and for two folders the table of compare(a, b): final errors side by side with their difference.",
    )
    parser.add_argument(
        "results", nargs="+", type=Path, metavar="RESULTS", help="result folders (experiment or results roots)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="PNG to write (default: figures/compare/<A>-vs-<B>.png, named after the folders, so that a compare "
        "of other folders never overwrites it)",
    )
    args = parser.parse_args(argv)
    args.out = args.out or compare_path(args.results)
    if args.out.is_dir():
        parser.exit(2, f"error: --out {args.out} is a directory; name a .png file\n")
    try:
        sets = {str(p): load_runs(p) for p in args.results}
        fig = figures.fig_compare(sets)
    except (FileNotFoundError, ValueError, CannotDraw) as e:
        parser.exit(2, f"error: {e}\n")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        files.save_figure(fig, args.out, dpi=150)
    except (OSError, files.DiskFull) as e:
        parser.exit(2, f"error: cannot write {args.out}: {getattr(e, 'strerror', None) or e}\n")
    print(f"compare: {args.out}")
    if len(sets) == 2:
        a, b = sets.values()
        table = compare(a, b)[
            [
                "run",
                "final_train_err_a",
                "final_train_err_b",
                "final_test_err_a",
                "final_test_err_b",
                "iterations_a",
                "iterations_b",
            ]
        ]
        print(
            f"a = {args.results[0]}, b = "
            f"{args.results[1]}\n{table.to_string(index=False, float_format=lambda v: f'{v:.2f}')}"
        )
    return 0


def compare_path(folders):
    """figures/compare/<a>-vs-<b>.png for result folders a, b (their paths without a leading results/)."""
    parts = [Path(p).relative_to(Path(p).anchor).parts for p in folders]
    names = ["-".join(x[1:] if x[:1] == ("results",) else x) for x in parts]
    return Path("figures/compare") / ("-vs-".join(names) + ".png")
