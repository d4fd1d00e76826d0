"""How a stage starts and stops: its arguments, the claims on its outputs, the lifeline, signals, exit codes,
and where a rerun resumes.

Every script in stages/ is `main(argv)` run by run_stage(main), and main's first line is stage_args(...):

- stage_args parses the command line (every flag a path that dvc.yaml passes, all required), pins the CPU
  threads (pin_threads: bit-identical reruns on one machine, whatever its load), starts the lifeline (the
  stage stops with the dvc process that started it) and claims every output it names (io.claim), so a
  second run on the same folders fails at once.
- run_stage turns what stops a stage into one line on stderr and an exit code: an AlignError (bad params,
  data or model; a lost dvc) exits 2, an OSError a user can fix (full disk, no permission, missing input)
  exits 2, Ctrl-C (SIGINT, even where the stage was started with it ignored) exits 130, SIGTERM 143 and SIGHUP
  129 (unless nohup ignores it); any other exception is
  a bug and keeps its traceback. The line for a stop says where `dvc repro` resumes: the training stage's
  Checkpointer registers itself here (set_resume_point).

Outputs are written atomically (io.py), so a stage that stops leaves none half-written.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

from alignkit import io, lifeline
from alignkit.errors import AlignError, Orphaned, Terminated, interrupted_message, os_error_message

# The flags that name what a stage writes: it claims them (io.claim) for its whole run.
OUTPUT_FLAGS = ("--out", "--out-dir", "--metrics", "--live", "--checkpoints", "--generations", "--plot")

# The checkpointer of the training stage running in this process: on a stop, the line names the step a rerun
# resumes from (None: the stage has none, or has not made it yet).
_resume_point = None


def set_resume_point(checkpointer):
    global _resume_point
    _resume_point = checkpointer


def stage_name():
    """The stage this process runs: DVC names it in DVC_STAGE (e.g. evaluate@dpo); run by hand, the script's name."""
    return os.environ.get("DVC_STAGE") or os.path.splitext(os.path.basename(sys.argv[0]))[0]


def pin_threads():
    """Fix how many CPU threads every kernel uses, for the whole run, from what this process may use -- never from
    the machine's load. A sum split over threads adds in an order that depends on their number, so a count chosen
    at run time changes the last digits of a result between two runs of one stage on one machine. torch's count
    is set once (its default: the cores it may use), and MKL's and OpenMP's dynamic adjustment, which may take
    fewer threads than that for a call, is turned off where torch carries those libraries. Returns the count.

    A stage whose script imports no torch (check_params, prepare, pretrained, report) computes nothing with it
    whose last digits a thread count could change; starting torch there only to pin it would cost each of those
    stages a second and a half. Then nothing is pinned and None is returned."""
    if "torch" not in sys.modules:
        return None
    import ctypes

    import torch

    threads = torch.get_num_threads()
    lib = Path(torch.__file__).parent / "lib"
    # MKL_Set_Dynamic is MKL's C entry point (by value); mkl_set_dynamic, its Fortran one, takes a pointer.
    for library, switch in (("libtorch_cpu.so", "MKL_Set_Dynamic"), ("libgomp.so.1", "omp_set_dynamic")):
        try:
            getattr(ctypes.CDLL(str(lib / library)), switch)(0)
        except (OSError, AttributeError):  # a torch built without MKL or GNU OpenMP: nothing to turn off
            pass
    torch.set_num_threads(threads)
    return threads


def stage_args(doc, flags, argv, optional=None):
    """Parse a stage's command line: every flag (a path, as dvc.yaml passes it) is required, but those of
    `optional` ({flag: default}). Then start the
    stage's run: the lifeline started (lifeline.watch), and every output it names
    (OUTPUT_FLAGS) claimed for its whole run; under `accelerate launch` the main process (RANK 0) holds the
    claims."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag in flags:
        parser.add_argument(flag, required=True)
    for flag, default in (optional or {}).items():
        parser.add_argument(flag, default=default)
    args = parser.parse_args(argv)
    pin_threads()
    lifeline.watch()
    if os.environ.get("RANK", "0") == "0":
        for flag in flags:
            if flag in OUTPUT_FLAGS:
                io.claim(getattr(args, flag[2:].replace("-", "_")), stage_name())
    return args


def _say(line):
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # the terminal or pipe went with the process that started the stage
        pass


def _terminated(signum, frame):
    raise Terminated(signum)


def run_stage(main, argv=None):
    """Run a stage's main(argv); an AlignError exits 2 with its one-line message, Ctrl-C exits 130, SIGTERM 143
    and SIGHUP 129, each with one line (see the module text)."""
    signal.signal(signal.SIGTERM, _terminated)
    # A stage started with SIGINT ignored -- by a shell's `cmd &` without job control (a script, a job runner,
    # a test suite run in the background), which every process below inherits, and which Python then keeps --
    # would sit on a Ctrl-C or `kill -INT` and train on for minutes. Asked to stop, a stage stops: it leaves
    # nothing half-written and `dvc repro` resumes it, so SIGINT is always its interrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup ignores it: then the stage runs on
        signal.signal(signal.SIGHUP, _terminated)
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
        if isinstance(err, Terminated):
            why, code = f"stopped ({signal.Signals(err.signum).name})", 128 + err.signum
        else:
            why, code = "interrupted (Ctrl-C)", 130
        _say(f"\n{interrupted_message(stage_name(), _resume_point, why)}")
        sys.exit(code)
