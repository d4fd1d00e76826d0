"""Atomic writes, and the claim a stage holds on what it writes.

An output appears whole or not at all. A directory is written beside its destination
(`.<name>.<random>.tmp`) and swapped in: on Linux by one exchange of the two names
(renameat2 RENAME_EXCHANGE), so at every instant `path` is a complete version, old or
new; elsewhere by two renames, old aside then new in, with the old version kept under
`.<name>.<random>.old.tmp` until the new one is in place. What a killed writer leaves
behind is cleared by the next claim() of the path: a stray temporary is deleted, and
where the kill fell between the two renames the old version is renamed back.

claim(path) takes an exclusive lock (flock on `.<name>.lock` beside the path) for the
rest of the process, so a second run of a stage on the same folders fails at once,
naming the holder (and a path that is itself a mount point, which cannot be renamed, fails
at once too); the lock file is removed at exit (one left by a killed process holds
no lock and is taken over). Temporaries and locks are gitignored and dvcignored.
"""

import atexit
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from alignkit.errors import WRITE_ERRNOS, AlignError, BusyError

_claims = {}  # path -> (open lock fd, lock path, folders made for it); the OS releases the lock on any death


def file_digest(path, algo="sha256"):
    """The hex digest of a file's bytes, read in 1 MiB blocks (hashlib.file_digest is Python 3.11+)."""
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _user_permissions(root):
    """Give everything under `root` (a file, or a directory and its contents) the permissions a plain
    open() or mkdir() would have under the user's umask: tempfile and safetensors make files private."""
    umask = _umask()
    root = Path(root)
    if root.is_dir():
        os.chmod(root, 0o777 & ~umask)
        for base, dirs, files in os.walk(root):
            for name in dirs:
                os.chmod(os.path.join(base, name), 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(base, name), 0o666 & ~umask)
    else:
        os.chmod(root, 0o666 & ~umask)


def _write_error(err, path):
    """An OSError naming `path` (the destination, not its temporary) for a failed write that a user can fix,
    or None to let `err` go as it is. Some writers do not raise OSError for a full disk: safetensors raises
    SafetensorError ("No space left on device"), torch.save a RuntimeError ("unexpected pos ..."); those are
    taken for a full disk where the file system has (almost) no room left."""
    if isinstance(err, OSError):
        if err.errno in WRITE_ERRNOS:
            return OSError(err.errno, err.strerror, str(path))
        return None
    if not isinstance(err, Exception) or isinstance(err, AlignError):
        return None
    try:
        full = shutil.disk_usage(Path(path).parent).free < (1 << 20)
    except OSError:
        full = False
    if full or "No space left on device" in str(err):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def _exchange(a, b):
    """Swap the names a and b in one step (Linux renameat2 RENAME_EXCHANGE); False where not supported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace(tmp, path):
    """Put the finished `tmp` (a file or directory beside `path`) in place of `path`; see the module text."""
    tmp, path = Path(tmp), Path(path)
    if not path.exists() or tmp.is_file():
        os.replace(tmp, path)  # one rename: atomic for a file, or a directory where there was none
        return
    if _exchange(tmp, path):
        _remove(tmp)  # now the old version
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old.tmp"))
    os.replace(path, old)  # a directory renames over an empty one
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def strays(path):
    """What killed writers of `path` left beside it: its temporaries (tempfile's 8 random characters between
    the name and .tmp), the kept old versions last."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}(\.old)?\.tmp")
    found = sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name)) if path.parent.is_dir() else []
    return sorted(found, key=lambda p: p.name.endswith(".old.tmp"))


def recover(path):
    """Clear what killed writers of `path` left: where `path` is missing and an old version was set aside
    (a kill between the two renames of replace()), rename it back; delete every other temporary."""
    path = Path(path)
    for stray in strays(path):
        if stray.name.endswith(".old.tmp") and not path.exists() and any(stray.iterdir()):
            os.replace(stray, path)
        else:
            _remove(stray)


def claim(path, what="this stage"):
    """Lock `path` (an output file or folder) for the rest of this process, then recover() it. A path
    another live process holds is a BusyError naming that process. At exit the lock file goes, and so do
    the folders made for it if nothing was written into them: a run that fails leaves no trace."""
    path = Path(path).absolute()
    if path in _claims:
        return
    if os.path.ismount(path):  # renaming it (replace) would fail with EBUSY, at the first checkpoint
        raise AlignError(
            f"{path}: is a mount point, and a stage replaces an output folder by renaming it; "
            "mount the folder above it instead"
        )
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            _remove_made(made)
            raise BusyError(f"{path}: in use by {holder}; wait for it to finish or stop it, then run again") from None
        try:  # the holder may have unlinked the file between our open and our lock: lock the one there now
            now, ours = os.stat(lock), os.fstat(fd)
            if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} ({what})\n".encode(), 0)
    _claims[path] = (fd, lock, made)
    recover(path)


def _remove_made(made):
    for folder in made:  # deepest first
        try:
            folder.rmdir()
        except OSError:  # not empty (written into, or someone else's), or gone
            break


@atexit.register
def release():
    """Drop every claim this process holds (run at exit): unlink each lock file while still holding it,
    then remove the folders claim() made that stayed empty."""
    while _claims:
        _, (fd, lock, made) = _claims.popitem()
        try:
            lock.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)
        _remove_made(made)


@contextmanager
def atomic_file(path):
    """Yield a temporary path beside `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _user_permissions(tmp)  # mkstemp makes it private; the result should not be
        os.replace(tmp, path)
    except BaseException as err:
        mapped = _write_error(err, path)
        if mapped is not None:
            raise mapped from err
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside `path`; on success it replaces `path` (replace()).

    If the body raises, the temporary directory is removed and `path` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _user_permissions(tmp)
        replace(tmp, path)
    except BaseException as err:
        mapped = _write_error(err, path)  # before the temporary goes: a full disk is still full
        shutil.rmtree(tmp, ignore_errors=True)
        if mapped is not None:
            raise mapped from err
        raise


def write_json(path, obj):
    """Write `obj` as indented JSON to `path` via a temporary file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
