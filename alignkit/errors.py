"""Errors a user can fix, and the one place that turns them into an exit code."""

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


def stage_args(doc, flags, argv):
    """Parse a stage's command line: every flag (a path, as dvc.yaml passes it) is required."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag in flags:
        parser.add_argument(flag, required=True)
    return parser.parse_args(argv)


# The checkpointer of the training stage running in this process (checkpoint.Checkpointer registers itself):
# on Ctrl-C it tells where a rerun resumes.
_resume_point = None


def register_resume_point(checkpointer):
    global _resume_point
    _resume_point = checkpointer


def interrupted_message(stage, checkpointer):
    """The one line a stage prints on Ctrl-C: what was lost, and where `dvc repro` picks up."""
    if checkpointer is None:
        return f"{stage}: interrupted (Ctrl-C); none of its outputs was written, `dvc repro` runs it again"
    if checkpointer.step is None:
        return (f"{stage}: interrupted (Ctrl-C) before its first checkpoint; "
                f"`dvc repro` runs it again from step 0")
    return (f"{stage}: interrupted (Ctrl-C); `dvc repro` resumes it from the checkpoint at step "
            f"{checkpointer.step} in {checkpointer.dir}")


def run_stage(main, argv=None):
    """Run a stage's main(argv); an AlignError exits 2 with its one-line message, Ctrl-C exits 130 with one line.

    Outputs are written atomically (io.py), so an interrupted stage leaves none half-written."""
    try:
        main(argv)
    except AlignError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # DVC names the stage it runs in DVC_STAGE (e.g. evaluate@dpo); run by hand, the script's name.
        stage = os.environ.get("DVC_STAGE") or os.path.splitext(os.path.basename(sys.argv[0]))[0]
        if "tqdm" in sys.modules:  # the bars stay as they were drawn: none is drawn again when Python exits
            for bar in list(sys.modules["tqdm"].tqdm._instances):
                bar.disable = True
        print(f"\n{interrupted_message(stage, _resume_point)}", file=sys.stderr, flush=True)
        sys.exit(130)
