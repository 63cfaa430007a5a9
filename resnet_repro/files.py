"""Atomic file writes, and the one way .pt files are read, shared by the run directory, the data caches and the
weights a user passes in."""

import errno
import io
import os
import pickle
import re
from pathlib import Path

import torch


class DiskFull(Exception):
    pass


def write_atomic(path, write):
    """Write via `write(file)` to a temporary file of this process, fsync, then rename over `path`: a crash
    or a full disk leaves the previous file intact, and processes writing the same file never mix."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    existed = path.exists()
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if existed else f"no {path.name} was written"
            raise DiskFull(f"disk full while writing {path}; {kept}. Free space and --resume.") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(obj, path):
    """torch.save, atomically (see write_atomic)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, lambda f: f.write(buf.getbuffer()))


class NotLoadable(ValueError):
    """A .pt file that cannot be read as tensors and plain data; the message is one line."""


def load_tensors(path):
    """torch.load of tensors and plain data only (weights_only): a pickle that would run code, as a file someone
    handed over may hold, is refused, never executed. NotLoadable saying why in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # what weights_only refuses: it names the class the pickle asks for
        found = re.search(r"Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+", str(e))
        raise NotLoadable(f"{path}: refused: it holds objects that only code could rebuild "
                          f"({found.group(0) if found else 'not plain data'}); only tensors and plain data are read") from None  # fmt: skip
    except Exception as e:  # a cut-off or foreign file fails inside the unpickler in many ways
        text = str(e).strip()
        raise NotLoadable(
            f"{path}: not readable ({type(e).__name__}: {text.splitlines()[0] if text else ''})"
        ) from None
