"""Timing and machine facts shared by every benchmark section."""

import os
import platform
import resource
import statistics
import subprocess
import time

import torch


def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync():
    """Wait for queued GPU work, so a timer reads finished work (a no-op on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, items, warmup):
    """Call fn(item) for each item; the first `warmup` calls are not timed.

    Returns the median seconds per call over the timed calls, and every result.
    Each side of a comparison gets the same items in the same order.
    """
    seconds, results = [], []
    for i, item in enumerate(items):
        sync()
        start = time.perf_counter()
        results.append(fn(item))
        sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), results


def timed_interleaved(sides, warmup):
    """Time several sides step by step in turn (a1 b1 a2 b2 ...), so that drift in the machine's
    speed over the run (clock, caches, other load) falls on every side alike.

    sides: {name: (fn, items)}, every items list of the same length. Returns {name: [seconds of each timed
    step]}, step i of every side on items[i].
    """
    seconds = {name: [] for name in sides}
    steps = {len(items) for _, items in sides.values()}
    assert len(steps) == 1, "every side needs the same number of steps"
    for i in range(steps.pop()):
        for name, (fn, items) in sides.items():
            sync()
            start = time.perf_counter()
            fn(items[i])
            sync()
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def ratio_row(path, unit, ours, theirs, goal, ours_label, theirs_label, ratio=None, **extra):
    """One comparison: throughputs (higher is better) and ours / theirs in this run (ratio: given where it
    is the median of per-step ratios on the same batches)."""
    ratio = ours / theirs if ratio is None else ratio
    return {
        "path": path,
        "unit": unit,
        "ours": ours,
        "theirs": theirs,
        "ratio": ratio,
        "goal": goal,
        "met": ratio >= goal,
        "ours_is": ours_label,
        "theirs_is": theirs_label,
        **extra,
    }


def run_measured(cmd, cwd, env=None):
    """Run a command to completion: (seconds, peak RSS of that process in MiB, stdout).

    os.wait4 gives the child's own resource usage, so each stage's peak is its own.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"`{cmd}` failed with exit code {proc.returncode}:\n{out[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def peak_memory_mib():
    """This process's peak: GPU memory allocated by torch on CUDA, else resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    import transformers
    import trl

    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }
