"""Bring run directories written by earlier versions of the suite to today's format, in place.

- `data` and `data_dir` in config.json, and in the config inside final.pt and checkpoint.pt: a path that
  leaves the repository (the machine's own, absolute or `../`) becomes `--data` and `data`;
- final.pt gets the per-pixel training mean its inputs were normalized by (weights written before they
  carried it), computed from the run's data at `--data` and checked against the run's dataset checksum;
  measures.json follows final.pt's new md5, as the weights themselves are unchanged;
- output.log names the results folder as the repository does, not by the machine's absolute path.

    uv run python tools/upgrade_results.py results/cpu-8k results/cpu-full --data data/CIFAR-10-images.tar.gz

Nothing is written unless something changes; a run whose data does not match is left as it was.
"""

import argparse
import re
import sys
from pathlib import Path

from resnet_repro import data, files
from resnet_repro.config import spec_from_config
from resnet_repro.engine import rundir

LOG_PATH = re.compile(r"(?<=-> )\S*/(?=results/)")  # "-> /somewhere/results/..." as the run printed it


def leaves_repository(path):
    return str(path).startswith(("/", "~", "../"))


def upgrade(run_dir, data_path, say=print):
    """Upgrade one run directory; returns what changed, as a list of file names."""
    run_dir, changed = Path(run_dir), []
    config = rundir.read_json(run_dir / "config.json")
    fix = {"data": str(data_path), "data_dir": "data"}
    fix = {k: v for k, v in fix.items() if leaves_repository(config.get(k, ""))}
    if fix:
        rundir.write_json(config | fix, run_dir / "config.json")
        changed.append("config.json")
    for name in ("final.pt", "checkpoint.pt"):
        path = run_dir / name
        if not path.exists():
            continue
        saved, old_md5 = files.load_tensors(path), files.md5_file(path)
        inner = {k: v for k, v in fix.items() if k in saved["config"]}
        new = {**saved, "config": saved["config"] | inner}
        if name == "final.pt" and "mean" not in saved:
            ds = data.load_for(spec_from_config(config | {"data": str(data_path)}), "data")
            if ds.checksum != config["dataset_checksum"]:
                say(
                    f"{run_dir}: {data_path} is not the run's data (checksum {ds.checksum[:8]}, the run's "
                    f"{config['dataset_checksum'][:8]}); {name} left as it was"
                )
                continue
            new["mean"] = ds.mean.cpu()
        if inner or len(new) != len(saved):
            files.save(new, path)
            changed.append(name)
        measures = run_dir / "measures.json"
        if name == "final.pt" and measures.exists():
            store = rundir.read_json(measures)
            if store.get("weights_md5") == old_md5 != files.md5_file(path):
                rundir.write_json(store | {"weights_md5": files.md5_file(path)}, measures)
                changed.append("measures.json")
    log = run_dir / "output.log"
    if log.exists():
        text = log.read_text(encoding="utf-8")
        if LOG_PATH.search(text):
            log.write_text(LOG_PATH.sub("", text), encoding="utf-8")
            changed.append("output.log")
    return changed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", type=Path, help="result roots or run directories")
    p.add_argument("--data", required=True, help="the runs' data, as a path inside the repository")
    args = p.parse_args(argv)
    if leaves_repository(args.data):
        p.error(f"--data {args.data}: give the data's path inside the repository, e.g. data/CIFAR-10-images")
    for root in args.roots:
        for config in sorted(root.rglob("config.json")):
            changed = upgrade(config.parent, args.data)
            print(f"{config.parent}: {', '.join(changed) if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
