"""The engine: one run, start to finish, in one process (or one torchrun group).

- `train`: the loop: resume, steps, a CSV row per epoch, checkpoints, the final test.
- `recipe`: the paper's recipe as code: torch flags, the model's wrapping (channels_last, compile, DDP), the lr
  schedule, one SGD step, the test pass, the running meter.
- `rundir`: a run's directory: config.json, status, checkpoints, locks, what a resume may continue.
- `metrics`: the per-epoch CSV (columns, appending, reading).
- `provenance`: the config.json a run records (spec, data, device, commit); `devices`: the default device, a
  --device checked, a device's name.
- `distributed`, `stopping`: torchrun's process group; SIGINT/SIGTERM as a request to stop at a step's end.
- `usual`: the pipeline most users write (torchvision DataLoader), kept as `bench`'s baseline.
"""
