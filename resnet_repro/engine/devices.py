"""Devices, for every command: the default (cuda if there is a GPU, else the CPU), a --device option checked
in one line, a device's printable name (config.json's `device`, the bench's CSV), and CPU threads asked for while
a run trains."""

import queue

import torch

# CPU thread counts asked for from another thread (a child of `run --jobs` hears them from its parent when a run
# beside it ends). torch.set_num_threads holds only for the thread that calls it, so the training loop takes them.
_threads_asked = queue.SimpleQueue()


def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def chosen_devices(text=None):
    """The devices of --device TEXT (a comma-separated list), by default [default_device()]."""
    return [torch.device(d.strip()) for d in text.split(",")] if text else [default_device()]


def device_error(text):
    """Why --device TEXT cannot be used (None if it can): an unknown name, an empty list item, an absent GPU."""
    for name in (d.strip() for d in text.split(",")):
        try:
            device = torch.device(name) if name else None
        except (RuntimeError, ValueError):
            device = None
        if device is None or device.type not in ("cpu", "cuda", "mps"):
            return (
                f"--device {text}: {name or 'an empty item'} is not a device; use cpu, cuda, cuda:1, ... or a "
                "comma-separated list of them"
            )
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            return f"--device {name}: no such CUDA GPU here ({torch.cuda.device_count()} visible); use --device cpu"
        if device.type == "mps" and not torch.backends.mps.is_available():
            return f"--device {name}: Apple's MPS is not available here; use --device cpu"
    return None


def device_name(device):
    """The GPU's model for a CUDA device ("NVIDIA H100 80GB HBM3"), else the device's type ("cpu")."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def ask_threads(n):
    """Ask the training loop of this process to train on n CPU threads from its next row on (any thread may ask)."""
    _threads_asked.put(int(n))


def threads_asked():
    """The latest thread count asked for since the last call, or None; for the thread that trains."""
    latest = None
    while not _threads_asked.empty():
        latest = _threads_asked.get_nowait()
    return latest
