"""The benchmark's own pipeline run: every stage of dvc.yaml in a temporary copy of the
repository, each as its own process (its time and peak memory), then `dvc status` and a
no-op `dvc repro` timed on the finished pipeline."""

import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from harness import run_measured

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def copy_repo(repo, dest):
    """The repository's tracked files (as they are in the working tree) in a new git repo at dest."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (repo / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, dest / name)
    env = {**os.environ, **GIT_ENV}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench copy"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)


def override_params(work, overrides, rows):
    """Apply dotted-key params overrides, and keep only the first `rows` data rows (CSV, or JSONL lines)."""
    path = work / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        section = params
        *parents, key = dotted.split(".")
        for name in parents:
            section = section[name]
        if key not in section:
            raise KeyError(f"bench config: pipeline.params: unknown params key '{dotted}'")
        section[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    for spec in params["data"].values() if rows is not None else []:  # every named data set
        data = work / spec["path"]
        if data.suffix == ".jsonl":  # one row a line, no header (the feedback sample)
            lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
            data.write_text("".join(lines[:rows]), encoding="utf-8")
            continue
        if data.suffix != ".csv":
            raise ValueError(f"bench config: pipeline.rows needs CSV or JSONL data, got {data}")
        with open(data, newline="", encoding="utf-8") as f:
            kept = list(csv.reader(f))[: rows + 1]
        with open(data, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(kept)


def stage_commands(work):
    """[(stage name, command)] in the order `dvc repro` runs them, read from dvc.yaml by DVC itself."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(work)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        return [(s.name, s.cmd) for s in reversed(list(nx.topological_sort(graph))) if s.cmd]


def _dvc(work, *args):
    return [sys.executable, "-m", "dvc", *args]


def run_pipeline(repo, work, settings, log):
    copy_repo(repo, work)
    override_params(work, settings["params"], settings["rows"])
    # The stages' `python` is this interpreter, as under `dvc repro` in an activated environment.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    stages = {}
    for name, cmd in stage_commands(work):
        if not cmd.startswith("python "):
            raise ValueError(f"stage {name}: expected a `python SCRIPT ...` command, got {cmd!r}")
        gpu_file = work / f".bench-{name}.json"
        wrapped = shlex.join([sys.executable, str(Path(__file__).with_name("stage_memory.py")), str(gpu_file)])
        seconds, rss, _ = run_measured(wrapped + cmd[len("python") :], work, env)
        gpu = json.loads(gpu_file.read_text())["gpu_peak_mib"]
        gpu_file.unlink()
        stages[name] = {"seconds": seconds, "peak_rss_mib": rss, "peak_gpu_mib": gpu}
        log(f"  {name}: {seconds:.1f}s, peak RSS {rss:.0f} MiB" + (f", GPU {gpu:.0f} MiB" if gpu else ""))
    # Record what was just built in dvc.lock (nothing reruns), so the timings below see a finished pipeline.
    run_measured(_dvc(work, "commit", "-f", "-q"), work)
    run_measured(_dvc(work, "repro", "-q"), work)  # the first one after commit may still hash files
    timings = {"status": [], "repro": []}
    for _ in range(settings["dvc_repeats"]):
        seconds, _, out = run_measured(_dvc(work, "status"), work)
        if "up to date" not in out:
            raise RuntimeError(f"dvc status after the run is not clean:\n{out}")
        timings["status"].append(seconds)
        seconds, _, out = run_measured(_dvc(work, "repro"), work)
        if "up to date" not in out:
            raise RuntimeError(f"dvc repro after the run was not a no-op:\n{out}")
        timings["repro"].append(seconds)
    dvc = {"status_s": statistics.median(timings["status"]), "repro_noop_s": statistics.median(timings["repro"])}
    log(f"  dvc status {dvc['status_s']:.2f}s, no-op dvc repro {dvc['repro_noop_s']:.2f}s")
    return stages, dvc
