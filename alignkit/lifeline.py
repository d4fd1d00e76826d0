"""A stage lives only as long as the process that started it.

When `dvc` is killed (kill -9, a lost terminal), the stage it ran is not: it is
reparented and would go on writing its folders while a new `dvc repro` starts a
second copy. watch() notes, when the stage starts, the process it lives for: the
nearest ancestor that is a `dvc` process (its shell may have exec'd into the
stage or may sit between them; `accelerate launch` sits between them too), or,
run by hand, the parent. The training loops call check() at every step; once
that process is gone, check() raises Orphaned and the stage stops there, leaving
its last checkpoint. A process is known by its pid and its start time, so a
reused pid is not taken for it.
"""

import os
from pathlib import Path

from alignkit.errors import AlignError

_watched = None  # (pid, start time or None, what it is)


class Orphaned(AlignError):
    """The process this stage was started by is gone."""


def _stat(pid):
    """(parent pid, start time in clock ticks) of `pid` from /proc, or None if there is no such process
    (a zombie, dead and not yet reaped by its parent, counts as none)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
    return None if fields[0] in ("Z", "X") else (int(fields[1]), int(fields[19]))


def _is_dvc(pid):
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    names = [os.path.basename(a) for a in argv[:2]]
    return "dvc" in names or argv[1:3] == ["-m", "dvc"]


def watch():
    """Remember which process this stage lives for (see the module text)."""
    global _watched
    parent = os.getppid()
    if not Path("/proc/self/stat").exists():  # no /proc: only the parent can be watched, by its pid
        _watched = (parent, None, f"the process that started it (pid {parent})")
        return
    pid = parent
    while pid > 1:
        stat = _stat(pid)
        if stat is None:
            break
        if _is_dvc(pid):
            _watched = (pid, stat[1], f"the dvc process that started it (pid {pid})")
            return
        pid = stat[0]
    stat = _stat(parent)
    _watched = (parent, stat[1] if stat else None, f"the process that started it (pid {parent})")


def gone():
    """What the watched process was, if it is gone; None while it lives (or when nothing is watched)."""
    if _watched is None:
        return None
    pid, started, what = _watched
    if started is None:
        return what if os.getppid() != pid else None
    stat = _stat(pid)
    return what if stat is None or stat[1] != started else None


def check():
    """Raise Orphaned once the watched process is gone: called by the training loops at every step."""
    what = gone()
    if what:
        raise Orphaned(f"{what} is gone")
