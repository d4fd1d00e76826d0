"""A stage run by `dvc` lives only as long as that dvc process.

When `dvc` is killed (kill -9, a lost terminal), the stage it ran is not: it is
reparented and would go on writing its folders while a new `dvc repro` starts a
second copy. watch() notes, when the stage starts, the process it lives for: the
nearest ancestor that is a `dvc` process (its shell may have exec'd into the
stage or may sit between them; `accelerate launch` sits between them too). The
training loops call check() at every step, and every long loop before training
(training.progress) at every item; once that process is gone, check() raises
Orphaned and the stage stops there, leaving its last checkpoint. A process is
known by its pid and its start time, so a reused pid is not taken for it.

A stage started by hand, with no dvc above it, follows the ordinary Unix rules
instead: nothing is watched, so `nohup python stages/sft.py ... &` runs on after
its terminal closes, and without nohup the terminal's SIGHUP stops it
(alignkit.stage turns that into one line, as for SIGTERM).
"""

import os
from pathlib import Path

from alignkit.errors import Orphaned

_watched = None  # (pid, start time, what it is) of the dvc process this stage lives for; None: none


def _stat(pid):
    """(parent pid, start time in clock ticks) of `pid` from /proc, or None if there is no such process
    (a zombie, dead and not yet reaped by its parent, counts as none)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
    return None if fields[0] in ("Z", "X") else (int(fields[1]), int(fields[19]))


def _is_dvc(pid):
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    names = [os.path.basename(a) for a in argv[:2]]
    return "dvc" in names or argv[1:3] == ["-m", "dvc"]


def watch():
    """Remember the dvc process this stage lives for, if there is one above it (see the module text)."""
    global _watched
    _watched = None
    pid = os.getppid()
    while pid > 1:
        stat = _stat(pid)
        if stat is None:  # no /proc (not Linux), or the process is gone: no dvc to be found
            return
        if _is_dvc(pid):
            _watched = (pid, stat[1], f"the dvc process that started it (pid {pid})")
            return
        pid = stat[0]


def gone():
    """What the watched process was, if it is gone; None while it lives (or when nothing is watched)."""
    if _watched is None:
        return None
    pid, started, what = _watched
    stat = _stat(pid)
    return what if stat is None or stat[1] != started else None


def check():
    """Raise Orphaned once the watched dvc process is gone: called by the loops at every step or item."""
    what = gone()
    if what:
        raise Orphaned(f"{what} is gone")
