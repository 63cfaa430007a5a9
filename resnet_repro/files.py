"""Atomic file writes, shared by the run directory and the data caches."""

import errno
import io
import os
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
