"""Launching: from an experiment to runs training somewhere.

- `plan`: the Jobs of an experiment (run x seed, with its resolved spec), how many at once.
- `local`: train them on this machine, in this process or in child processes (`python -m
  resnet_repro.launch.local` is a child), each dataset loaded once per process.
- `slurm`: one Slurm job per run and seed.
"""
