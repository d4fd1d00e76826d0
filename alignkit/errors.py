"""Errors a user can fix, and the one place that turns them into an exit code."""

import errno
import os
import sys


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


class ModelError(AlignError):
    """A model or tokenizer that cannot be found or built."""


def show(value, width=40):
    """A value for a one-line error: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# The flags that name what a stage writes: it claims them (io.claim) for its whole run.
OUTPUT_FLAGS = ("--out", "--out-dir", "--metrics", "--live", "--checkpoints", "--generations", "--plot")


def stage_args(doc, flags, argv):
    """Parse a stage's command line: every flag (a path, as dvc.yaml passes it) is required. Then start the
    stage's run: it stops with the process that started it (lifeline.watch), and it claims every output it
    names (OUTPUT_FLAGS) for its whole run, so a second run on the same folders fails at once; under
    `accelerate launch` the main process (RANK 0) holds the claims."""
    import argparse

    from alignkit import lifeline
    from alignkit.io import claim

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag in flags:
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    lifeline.watch()
    if os.environ.get("RANK", "0") == "0":
        for flag in flags:
            if flag in OUTPUT_FLAGS:
                claim(getattr(args, flag[2:].replace("-", "_")), stage_name())
    return args


# The checkpointer of the training stage running in this process (checkpoint.Checkpointer registers itself):
# on Ctrl-C it tells where a rerun resumes.
_resume_point = None


def register_resume_point(checkpointer):
    global _resume_point
    _resume_point = checkpointer


def stage_name():
    """The stage this process runs: DVC names it in DVC_STAGE (e.g. evaluate@dpo); run by hand, the script's name."""
    return os.environ.get("DVC_STAGE") or os.path.splitext(os.path.basename(sys.argv[0]))[0]


def interrupted_message(stage, checkpointer, why="interrupted (Ctrl-C)"):
    """The one line a stage prints when it stops before its end: why, what was lost, and where `dvc repro`
    picks up."""
    if checkpointer is None:
        return f"{stage}: {why}; none of its outputs was written, `dvc repro` runs it again"
    if checkpointer.step is None:
        return f"{stage}: {why} before its first checkpoint; `dvc repro` runs it again from step 0"
    return (f"{stage}: {why}; `dvc repro` resumes it from the checkpoint at step "
            f"{checkpointer.step} in {checkpointer.dir}")


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
    return (f"{stage}: cannot write {err.filename}: {err.strerror}; outputs are written whole or not at all, "
            f"so every earlier one is as it was; {kept}")


def _say(line):
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # the terminal or pipe went with the process that started the stage
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's notice, `accelerate launch` stopping its workers): a stop like Ctrl-C."""


def _terminated(signum, frame):
    raise Terminated()


def run_stage(main, argv=None):
    """Run a stage's main(argv); an AlignError exits 2 with its one-line message, Ctrl-C exits 130 and SIGTERM
    143, each with one line.

    Outputs are written atomically (io.py), so an interrupted stage leaves none half-written; a stop by a signal
    it can catch also removes its lock files (io.claim) on the way out."""
    import signal

    from alignkit.lifeline import Orphaned

    signal.signal(signal.SIGTERM, _terminated)
    try:
        main(argv)
    except Orphaned as err:
        _say(f"error: {interrupted_message(stage_name(), _resume_point, f'stopped: {err}')}")
        sys.exit(2)
    except AlignError as err:
        _say(f"error: {err}")
        sys.exit(2)
    except OSError as err:
        line = os_error_message(stage_name(), err, _resume_point)
        if line is None:
            raise
        _say(f"error: {line}")
        sys.exit(2)
    except KeyboardInterrupt as err:
        if "tqdm" in sys.modules:  # the bars stay as they were drawn: none is drawn again when Python exits
            for bar in list(sys.modules["tqdm"].tqdm._instances):
                bar.disable = True
        why, code = ("stopped (SIGTERM)", 143) if isinstance(err, Terminated) else ("interrupted (Ctrl-C)", 130)
        _say(f"\n{interrupted_message(stage_name(), _resume_point, why)}")
        sys.exit(code)
