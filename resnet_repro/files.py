"""Atomic file writes, the one way rows are appended to a CSV file, the one way .pt files are read, and the one way
weights are downloaded, shared by the run directory, the data caches, the analysis and the weights a user passes
in."""

import csv
import errno
import hashlib
import io
import os
import pickle
import re
import sys
import urllib.error
import urllib.parse
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


def write_text(path, text):
    """A text file as UTF-8 (whatever the locale), atomically (see write_atomic)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


class HeaderMismatch(ValueError):
    """A CSV file to append to whose header is not the columns of its rows."""


def append_csv(path, columns, rows, lineterminator="\r\n"):
    """Append `rows` (dicts over `columns`) to the CSV file at `path`, creating it and its folder with the header
    where it is absent or empty, in one write, flushed and fsynced: a row is in the file whole or not at all, and
    a full disk (DiskFull) leaves the file as it was. HeaderMismatch where the file's header is not `columns`."""
    path = Path(path)
    existed = path.exists()
    new = not existed or path.stat().st_size == 0
    if not new:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        if header != list(columns):
            raise HeaderMismatch(f"{path}: its columns are {','.join(header)}, not {','.join(columns)}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator=lineterminator)
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer.writeheader()
    writer.writerows(rows)
    data = memoryview(buf.getvalue().encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, size)  # a row cut off by the error goes
            if not existed:
                path.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"disk full while writing {path}; no row was added") from None
            raise
    finally:
        os.close(fd)


def save_figure(fig, path, **kwargs):
    """fig.savefig(path, **kwargs), atomically (see write_atomic): a figure cut short never replaces a good one."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip("."), **kwargs)
    write_atomic(path, lambda f: f.write(buf.getbuffer()))


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
        raise NotLoadable(
            f"{path}: refused: it holds objects that only code could rebuild "
            f"({found.group(0) if found else 'not plain data'}); only tensors and plain data are read"
        ) from None
    except Exception as e:  # a cut-off or foreign file fails inside the unpickler in many ways
        text = str(e).strip()
        raise NotLoadable(
            f"{path}: not readable ({type(e).__name__}: {text.splitlines()[0] if text else ''})"
        ) from None


def md5_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_url(source):
    return str(source).startswith(("http://", "https://", "file://"))


def fetch_weights(source, directory):
    """The local file of a weights `source`: a path as it is, or a URL downloaded once into `directory`
    (torch.hub's download, which verifies a hash in the file name, `name-<sha256 prefix>.ext`, as torch.hub
    names published weights). A file already there is used only when it still has that hash: a file someone
    put in a cache is checked like a download. ValueError in one line when it cannot be had or does not match."""
    if not is_url(source):
        return Path(source).expanduser()
    name = Path(urllib.parse.urlparse(str(source)).path).name
    if not name:
        raise ValueError(f"{source}: a weights URL must end in a file name")
    found = torch.hub.HASH_REGEX.search(name)
    prefix = found.group(1) if found else None
    path = Path(directory) / name
    if path.is_file():
        if prefix is None or sha256_file(path).startswith(prefix):
            return path
        raise ValueError(f"{path} does not have the hash its name says ({prefix}); delete it to download it again")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(str(source), str(path), hash_prefix=prefix, progress=False)
    except (OSError, urllib.error.URLError, RuntimeError) as e:  # RuntimeError: the hash did not match
        text = str(getattr(e, "reason", e)).strip().splitlines()
        raise ValueError(
            f"could not download {source} into {path.parent}/: {text[0] if text else type(e).__name__}"
        ) from None
    return path


def utf8_console():
    """A command's output in a locale that is not UTF-8 (LC_ALL=C): characters it cannot show become "?" instead of
    ending the command; files are written as UTF-8 whatever the locale."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="replace")
