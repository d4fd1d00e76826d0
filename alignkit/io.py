"""Atomic writes: an output appears whole or not at all."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_file(path):
    """Yield a temporary path beside `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result should not be
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside `path`; on success it replaces `path`.

    If the body raises, the temporary directory is removed and `path` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)


def write_json(path, obj):
    """Write `obj` as indented JSON to `path` via a temporary file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
