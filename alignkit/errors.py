"""Every exception of alignkit, and the helpers that format one-line messages.

A leaf: it imports nothing from alignkit. What turns these exceptions into exit
codes and one-line messages on stderr is alignkit.stage (run_stage).
"""

import errno
import re


class AlignError(Exception):
    """A problem with the user's input (data, params, model path).

    The message is one line that names the file, row, column or params key.
    Stages print it without a traceback and exit non-zero; any other exception
    is a bug and keeps its traceback.
    """


class ParamsError(AlignError):
    """A malformed params file."""


class DataError(AlignError):
    """Raw preference data that cannot be used as it is."""


class BadRow(DataError):
    """A problem with one row of raw data (alignkit.data): dropped and counted under `reason`, or the stage's
    error."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


class ModelError(AlignError):
    """A model or tokenizer that cannot be found or built."""


class BusyError(AlignError):
    """Another process holds the claim on an output (alignkit.io.claim)."""


class Orphaned(AlignError):
    """The dvc process this stage was started by is gone (alignkit.lifeline)."""


class TrainingError(AlignError):
    """Training cannot go on (a non-finite loss, an unreadable checkpoint)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's notice, `accelerate launch` stopping its workers) or SIGHUP (the
    terminal of a stage started by hand closed): a stop like Ctrl-C. `signum`: which."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def show(value, width=40):
    """A value for a one-line error: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def refused_pickle(err):
    """Why torch.load(weights_only=True) refused a file (its pickle.UnpicklingError), in our words: torch's own
    message suggests retrying with weights_only=False, the unsafe action, so it is never shown."""
    culprit = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(err))
    call = culprit.group(1) if culprit else "code"
    return f"it holds more than tensors and plain containers, and unpickling it would call {call}"


def interrupted_message(stage, checkpointer, why="interrupted (Ctrl-C)"):
    """The one line a stage prints when it stops before its end: why, what was lost, and where `dvc repro`
    picks up. checkpointer: the stage's Checkpointer (its .step and .dir), or None."""
    if checkpointer is None:
        return f"{stage}: {why}; none of its outputs was written, `dvc repro` runs it again"
    if checkpointer.step is None:
        return f"{stage}: {why} before its first checkpoint; `dvc repro` runs it again from step 0"
    return (
        f"{stage}: {why}; `dvc repro` resumes it from the checkpoint at step {checkpointer.step} in {checkpointer.dir}"
    )


# What a full disk, a permission or a read-only file system says: one line, never a traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_message(stage, err, checkpointer):
    """The one line for an OSError a user can fix (a full disk, no permission, a missing input), or None."""
    if err.filename is None:
        return None
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return f"{stage}: {err.filename}: {err.strerror}"
    if err.errno not in WRITE_ERRNOS:
        return None
    kept = interrupted_message(stage, checkpointer, "stopped").split("; ", 1)[1]
    return (
        f"{stage}: cannot write {err.filename}: {err.strerror}; outputs are written whole or not at all, "
        f"so every earlier one is as it was; {kept}"
    )
