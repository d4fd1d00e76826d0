"""Errors a user can fix, and the one place that turns them into an exit code."""

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


def run_stage(main, argv=None):
    """Run a stage's main(argv); an AlignError exits 2 with its one-line message."""
    try:
        main(argv)
    except AlignError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
