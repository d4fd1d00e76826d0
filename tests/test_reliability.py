"""Reliability: identical reruns, resume after SIGKILL, the non-finite-loss guard, and a bad day: the dvc
process killed under its trainer, a second trainer on the same folders, damaged checkpoints, a kill inside a
folder replacement, a full disk.

The DVC runs use a reduced pipeline (240 data rows, small batches, frequent
checkpoints) in temporary copies of the repository; the others run the reward
stage on the prepared sample, cut to a few steps.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from alignkit.errors import AlignError
from tests.conftest import REPO, copy_repo, dvc, run_here, stage_env, stage_main, write_params

REDUCED = {
    "reward": {"epochs": 2, "batch_size": 4, "checkpoint_every": 5},
    "sft": {"epochs": 2, "batch_size": 4, "checkpoint_every": 5},
    "dpo": {"epochs": 1, "batch_size": 4, "checkpoint_every": 5},
    "ppo": {
        "max_steps_per_epoch": 6,
        "batch_size": 4,
        "mini_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "checkpoint_every": 2,
    },
    "online": {"max_steps_per_epoch": 6, "prompts_per_step": 2, "mini_batch_size": 4, "checkpoint_every": 2},
}
ROWS = 240
OUTPUTS = {
    "reward@helpful": ["models/reward/helpful"],
    "sft": ["models/sft"],
    "dpo": ["models/dpo"],
    "ppo": ["models/ppo"],
    "online": ["models/online"],
}


def reduce_repo(repo):
    """Shrink the copy's params and data so a whole `dvc repro` takes under a minute."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in REDUCED.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    for spec in params["data"].values():  # the helpfulness and the safety set
        data = repo / spec["path"]
        lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
        data.write_text("".join(lines[: ROWS + 1]), encoding="utf-8")
    return repo


def metrics_files(repo):
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted((repo / "metrics").rglob("*.json"))}


@pytest.fixture(scope="module")
def reduced_repo(tmp_path_factory):
    """A reduced copy after one full `dvc repro`: the uninterrupted reference run."""
    repo = reduce_repo(copy_repo(tmp_path_factory.mktemp("reduced") / "repo"))
    dvc(repo, "repro")
    return repo


def private_copy(repo, tmp_path):
    dest = tmp_path / "repo"
    shutil.copytree(repo, dest, symlinks=True)
    return dest


@pytest.mark.slow
@pytest.mark.same_run_only
def test_two_clean_runs_give_identical_metrics_and_models(reduced_repo, tmp_path):
    """A forced rerun of every stage reproduces every metrics file byte for byte, and dvc.lock
    (which holds the hash of every model) is unchanged."""
    repo = private_copy(reduced_repo, tmp_path)
    dvc(repo, "repro", "-f")
    first = metrics_files(reduced_repo)
    # data/{helpful,safety,feedback}, reward/{helpful,safety}, judge/{helpful,safety}, sft, dpo, ppo, online,
    # eval/{sft,ppo,dpo,online}, compare: the verdict too is byte for byte the same
    assert len(first) == 16
    assert metrics_files(repo) == first
    assert (repo / "dvc.lock").read_text() == (reduced_repo / "dvc.lock").read_text()


def kill_when_checkpointed(repo, stage, every):
    """Start `dvc repro -f -s stage`, SIGKILL its whole process group once the stage has written
    a checkpoint, and return the step of that checkpoint."""
    info = repo / "checkpoints" / stage.replace("@", "/") / "checkpoint.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "-f", "-s", stage],
        cwd=repo,
        env=stage_env(repo),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            try:
                state = json.loads(info.read_text())
            except (OSError, ValueError):
                state = None
            if state and not state["complete"] and state["step"] >= every:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return state["step"]
            if proc.poll() is not None:
                pytest.fail(f"{stage} finished before a checkpoint could be caught:\n{proc.stdout.read().decode()}")
            time.sleep(0.01)
        pytest.fail(f"no checkpoint of {stage} appeared")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.same_run_only
@pytest.mark.parametrize("stage", ["reward@helpful", "sft", "dpo", "ppo", "online"])
def test_killed_stage_resumes_from_its_checkpoint(reduced_repo, tmp_path, stage):
    repo = private_copy(reduced_repo, tmp_path)
    step = kill_when_checkpointed(repo, stage, REDUCED[stage.split("@")[0]]["checkpoint_every"])
    metrics = f"metrics/{stage.replace('@', '/')}.json"

    # The kill left no half-written model or metrics for a later stage to read.
    for out in OUTPUTS[stage] + [metrics]:
        assert not (repo / out).exists(), out

    printed = dvc(repo, "repro")
    resumed = [line for line in printed.splitlines() if "resumed from checkpoint at step" in line]
    assert resumed, printed
    resumed_at = int(resumed[0].rsplit(" ", 1)[1])
    assert resumed_at >= step > 0
    # The same final metrics, and the same models (their hashes are in dvc.lock), as the uninterrupted run.
    assert (repo / metrics).read_bytes() == (reduced_repo / metrics).read_bytes()
    assert (repo / "dvc.lock").read_text() == (reduced_repo / "dvc.lock").read_text()
    assert (
        json.loads((repo / "checkpoints" / stage.replace("@", "/") / "checkpoint.json").read_text())["complete"] is True
    )


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.same_run_only
def test_killing_dvc_stops_its_trainer_and_the_rerun_is_the_only_one(reduced_repo, tmp_path):
    """kill -9 of the dvc process alone (not its process group): the trainer it started stops at its next step,
    leaving its checkpoint; the next `dvc repro` runs one trainer, which resumes; the curves have each step once and
    the outputs are those of the uninterrupted run."""
    repo = private_copy(reduced_repo, tmp_path)
    info, lock = repo / "checkpoints" / "dpo" / "checkpoint.json", repo / "checkpoints" / ".dpo.lock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "-f", "-s", "dpo"],
        cwd=repo,
        env=stage_env(repo),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                state = json.loads(info.read_text())
            except (OSError, ValueError):
                state = None
            if state and not state["complete"] and state["step"] >= REDUCED["dpo"]["checkpoint_every"]:
                break
            assert proc.poll() is None, "dpo finished before a checkpoint could be caught"
            time.sleep(0.01)
        trainer = int(lock.read_text().split()[1])  # "pid N (dpo)": the stage holding its folders
        assert trainer != proc.pid and alive(trainer)
        os.kill(proc.pid, signal.SIGKILL)  # dvc alone
        proc.wait()
        deadline = time.monotonic() + 120
        while alive(trainer) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(trainer), "the trainer outlived the dvc process that started it"
        # It stopped at a step, not at its end: its checkpoint stays, and it wrote no model.
        assert json.loads(info.read_text())["complete"] is False and not (repo / "models" / "dpo").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group: nothing, if the test passed
    printed = dvc(repo, "repro")
    assert printed.count("Running stage 'dpo'") == 1 and "resumed from checkpoint at step" in printed, printed
    for curve in sorted((repo / "dvclive" / "dpo" / "plots" / "metrics" / "train").rglob("*.tsv")):
        steps = [line.split("\t")[0] for line in curve.read_text().splitlines()[1:]]
        assert steps == sorted(set(steps), key=int), curve  # each step once, in order
    assert (repo / "metrics" / "dpo.json").read_bytes() == (reduced_repo / "metrics" / "dpo.json").read_bytes()
    for curve in sorted((reduced_repo / "dvclive" / "dpo" / "plots").rglob("*.tsv")):
        assert (repo / curve.relative_to(reduced_repo)).read_text() == curve.read_text(), curve
    assert (repo / "dvc.lock").read_text() == (reduced_repo / "dvc.lock").read_text()


def test_a_non_finite_loss_stops_the_stage_naming_the_step_and_keeps_the_last_checkpoint(
    prepared_sample, tmp_path, monkeypatch
):
    import alignkit.reward as reward

    calls = {"n": 0}
    real = reward.batch_loss

    def nan_at_fifth_step(model, batch):
        loss, logs = real(model, batch)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] == 5 else loss), logs

    monkeypatch.setattr(reward, "batch_loss", nan_at_fifth_step)
    params = write_params(tmp_path / "params.yaml", reward={"epochs": 1, "checkpoint_every": 2})
    out = tmp_path / "out"
    with pytest.raises(AlignError) as err:
        stage_main("reward")(
            [
                "--params",
                str(params),
                "--name",
                "helpful",
                "--data",
                str(prepared_sample),
                "--out",
                str(out / "reward"),
                "--metrics",
                str(out / "reward.json"),
                "--live",
                str(out / "live"),
                "--checkpoints",
                str(out / "checkpoints"),
            ]
        )
    message = str(err.value)
    assert message.startswith("reward: the loss is nan at step 5 (epoch 0)"), message
    assert "last good checkpoint is kept (step 4 in" in message and "\n" not in message
    info = json.loads((out / "checkpoints" / "checkpoint.json").read_text())
    assert info["step"] == 4 and info["complete"] is False
    assert (out / "checkpoints" / "model.safetensors").is_file()
    assert not (out / "reward").exists() and not (out / "reward.json").exists()


def test_resume_skips_a_checkpoint_of_other_params(prepared_sample, tmp_path):
    """A checkpoint whose fingerprint differs (here: another lr) is not resumed: training starts at step 0."""
    from alignkit.checkpoint import sealed, stage_checkpointer
    from alignkit.params import load_params
    from alignkit.training import make_accelerator

    accelerator = make_accelerator("fp32", "reward.precision")
    a = load_params(write_params(tmp_path / "a.yaml", reward={"lr": 1e-3}))
    b = load_params(write_params(tmp_path / "b.yaml", reward={"lr": 2e-3}))
    c = load_params(write_params(tmp_path / "c.yaml", reward={"lr": 1e-3, "checkpoint_every": 7}))
    fp = [
        stage_checkpointer(tmp_path / "ck", "reward", p, accelerator, [prepared_sample]).fingerprint for p in (a, b, c)
    ]
    assert fp[0] != fp[1]
    assert fp[0] == fp[2]  # how often checkpoints are written changes nothing about the result
    Path(tmp_path / "ck").mkdir()
    info = sealed({"step": 3, "fingerprint": fp[1], "complete": False, "files": {"state.pt": "0" * 64}})
    (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps(info))
    assert stage_checkpointer(tmp_path / "ck", "reward", a, accelerator, [prepared_sample]).load(None) is None


# --- A bad day: the dvc process killed under its trainer, two trainers, damaged checkpoints, kills inside a
# folder replacement, a full disk. The reward stage alone, cut to 8 steps with a checkpoint every 2.
SHORT = {"epochs": 1, "batch_size": 4, "max_steps": 8, "checkpoint_every": 2}


def reward_argv(data, out):
    return [
        "--params",
        str(out / "params.yaml"),
        "--name",
        "helpful",
        "--data",
        str(data),
        "--out",
        str(out / "model"),
        "--metrics",
        str(out / "reward.json"),
        "--live",
        str(out / "live"),
        "--checkpoints",
        str(out / "checkpoints"),
    ]


def run_reward(data, out, wrapper=None, env=None):
    """The reward stage as a process (run by `wrapper`, a script that patches alignkit, when given)."""
    if not (out / "params.yaml").exists():
        write_params(out / "params.yaml", reward=SHORT)
    script = [str(wrapper)] if wrapper else []
    return subprocess.run(
        [sys.executable, *script, str(REPO / "stages" / "reward.py"), *reward_argv(data, out)],
        capture_output=True,
        text=True,
        env=stage_env() | (env or {}),
        timeout=600,
    )


def run_reward_in_process(data, out):
    """run_reward in this process, under run_stage (exit code, one-line errors), as conftest.run_here runs it."""
    if not (out / "params.yaml").exists():
        write_params(out / "params.yaml", reward=SHORT)
    return run_here("reward", reward_argv(data, out), out)


def stray_temporaries(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob(".*.tmp"))


@pytest.fixture(scope="module")
def uninterrupted(prepared_sample, tmp_path_factory):
    """The short reward run, uninterrupted: the reference for final outputs (run in this process: the same
    bytes as in a subprocess, which the subprocess tests below compare with)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    done = run_reward_in_process(prepared_sample, out)
    assert done.returncode == 0, done.stderr
    return out


def same_outputs(out, reference):
    assert (out / "reward.json").read_bytes() == (reference / "reward.json").read_bytes()
    for file in sorted((reference / "model").iterdir()):
        assert (out / "model" / file.name).read_bytes() == file.read_bytes(), file.name


def stopped_at_step_4(data, out):
    """A short reward run stopped (Ctrl-C) after step 5: its checkpoint is step 4's, not complete."""
    wrapper = out.parent / f"{out.name}-stop.py"
    wrapper.write_text(STOP_AFTER_STEP_5)
    out.mkdir(parents=True)
    stopped = run_reward(data, out, wrapper)
    assert stopped.returncode == 130, stopped.stderr
    assert json.loads((out / "checkpoints" / "checkpoint.json").read_text())["step"] == 4
    return out


def stopped_here_at_step_4(data, out, monkeypatch):
    """stopped_at_step_4 in this process: Ctrl-C's KeyboardInterrupt at the sixth step."""
    import alignkit.reward as reward

    real, calls = reward.batch_loss, [0]

    def batch_loss(model, batch):
        calls[0] += 1
        if calls[0] == 6:
            raise KeyboardInterrupt
        return real(model, batch)

    out.mkdir(parents=True)
    with monkeypatch.context() as patch:
        patch.setattr(reward, "batch_loss", batch_loss)
        stopped = run_reward_in_process(data, out)
    assert stopped.returncode == 130, stopped.stderr
    assert json.loads((out / "checkpoints" / "checkpoint.json").read_text())["step"] == 4
    return out


# Runs argv[1] as __main__ (argv shifted), after the patch in the text that follows this header.
WRAPPER = """import os, runpy, signal, sys
sys.argv = sys.argv[1:]
import alignkit.io as io
"""
STOP_AFTER_STEP_5 = (
    WRAPPER
    + """import alignkit.reward as reward
real, calls = reward.batch_loss, [0]
def batch_loss(model, batch):
    calls[0] += 1
    if calls[0] == 6:
        raise KeyboardInterrupt
    return real(model, batch)
reward.batch_loss = batch_loss
runpy.run_path(sys.argv[0], run_name="__main__")
"""
)


def test_a_second_run_on_the_same_folders_fails_at_once_naming_the_holder(prepared_sample, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from alignkit.io import claim; claim(sys.argv[1], 'reward@helpful');"
            " print('held', flush=True); time.sleep(600)",
            str(tmp_path / "checkpoints"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=stage_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        second = run_reward_in_process(prepared_sample, tmp_path)
        assert time.monotonic() - started < 60  # at once: before any model is loaded (not a timing claim: a bound)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip() == (
        f"error: {tmp_path / 'checkpoints'}: in use by pid {holder.pid} (reward@helpful); "
        "wait for it to finish or stop it, then run again"
    )
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "model").exists()
    # Once the holder is gone (however it died: this one by SIGKILL, leaving its lock file), its lock went with it.
    assert (tmp_path / ".checkpoints.lock").exists()
    again = run_reward_in_process(prepared_sample, tmp_path)
    assert again.returncode == 0, again.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")]  # each run removes its own at exit


def test_a_failed_run_leaves_no_lock_file_and_no_folder_made_for_one(tmp_path):
    out = tmp_path / "a" / "b" / "model"
    code = (
        "import sys; from alignkit.io import claim; claim(sys.argv[1], 'reward'); "
        "claim(sys.argv[2], 'reward'); sys.exit('failed')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), str(out.parent / "checkpoints")],
        capture_output=True,
        text=True,
        env=stage_env(),
    )
    assert done.returncode == 1 and done.stderr.strip() == "failed"
    assert list(tmp_path.iterdir()) == []
    # A folder the run wrote into stays, with what was written; only the lock files go.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code.replace("sys.exit", "open(sys.argv[1], 'w').write('x'); sys.exit"),
            str(out),
            str(out.parent / "checkpoints"),
        ],
        capture_output=True,
        text=True,
        env=stage_env(),
    )
    assert done.returncode == 1 and sorted(p.name for p in out.parent.iterdir()) == ["model"]


def test_a_claim_taken_as_the_holder_unlinks_its_lock_file_locks_the_file_there_now(tmp_path, monkeypatch):
    """The race of unlinking a lock file: we open it, the holder exits (unlinking it), we lock the unlinked file.
    The claim must notice and lock the path's file instead, or a third process would run beside us."""
    import fcntl

    import alignkit.io as io

    target = tmp_path / "model"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from alignkit.io import claim; claim(sys.argv[1], 'x');"
            " print('held', flush=True); sys.stdin.readline()",
            str(target),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=stage_env(),
    )
    assert holder.stdout.readline().strip() == "held"
    real, calls = fcntl.flock, []

    def flock(fd, op):
        if not calls:  # first attempt: the file we opened is the holder's; let it exit and unlink it first
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(timeout=60)
        calls.append(os.fstat(fd).st_nlink)  # 0: a file no longer in any folder
        return real(fd, op)

    monkeypatch.setattr(io.fcntl, "flock", flock)
    monkeypatch.setattr(io, "_claims", {})
    io.claim(target, "ours")
    try:
        lock = tmp_path / ".model.lock"
        fd = io._claims[target.absolute()][0]
        assert calls == [0, 1] and os.stat(lock).st_ino == os.fstat(fd).st_ino
        third = subprocess.run(
            [sys.executable, "-c", "import sys; from alignkit.io import claim; claim(sys.argv[1])", str(target)],
            capture_output=True,
            text=True,
            env=stage_env(),
        )
        assert third.returncode == 1 and f"in use by pid {os.getpid()} (ours)" in third.stderr
    finally:
        io.release()
    assert not lock.exists()


@pytest.mark.parametrize(
    "damaged", ["model.safetensors", "state.pt", "checkpoint.json", "live/plots/metrics/train/loss.tsv"]
)
def test_a_flipped_byte_in_any_checkpoint_file_is_refused_naming_it(prepared_sample, tmp_path, monkeypatch, damaged):
    """In this process: what is checked is checkpoint.py's reading, which a subprocess adds nothing to."""
    out = stopped_here_at_step_4(prepared_sample, tmp_path / "run", monkeypatch)
    path = out / "checkpoints" / damaged
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    resumed = run_reward_in_process(prepared_sample, out)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr
    line = resumed.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {path}: damaged"), line
    assert "good" not in line and line.endswith(f"not resumed: delete {out / 'checkpoints'} to start afresh")
    assert path.read_bytes() == bytes(data)  # refused, not overwritten
    assert not (out / "model").exists()


@pytest.mark.slow
def test_the_checkpoint_is_complete_only_after_the_outputs_are_written(prepared_sample, uninterrupted, tmp_path):
    """A kill between the end of training and the final save loses nothing: the checkpoint is still there, and the
    rerun resumes from it and writes what an uninterrupted run writes."""
    wrapper = tmp_path / "kill-at-save.py"
    wrapper.write_text(
        WRAPPER
        + """import alignkit.reward as reward
def save_reward_model(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
reward.save_reward_model = save_reward_model
runpy.run_path(sys.argv[0], run_name="__main__")
"""
    )
    out = tmp_path / "run"
    out.mkdir()
    killed = run_reward(prepared_sample, out, wrapper)
    assert killed.returncode == -signal.SIGKILL
    info = json.loads((out / "checkpoints" / "checkpoint.json").read_text())
    assert info["complete"] is False and info["step"] == 8
    resumed = run_reward_in_process(prepared_sample, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint at step 8" in resumed.stdout
    same_outputs(out, uninterrupted)
    assert json.loads((out / "checkpoints" / "checkpoint.json").read_text())["complete"] is True


# Kills the stage inside the 2nd replacement of its checkpoint folder (step 4's over step 2's), at KILL_WHERE.
KILL_IN_REPLACE = (
    WRAPPER
    + """import shutil
where, target, count = os.environ["KILL_WHERE"], os.path.abspath(os.environ["KILL_DIR"]), [0]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_exchange, real_os_replace = io.replace, io._exchange, os.replace
def replace(tmp, path):
    if os.path.abspath(path) == target:
        count[0] += 1
        if count[0] == 2 and where == "before the swap":
            die()
    return real_replace(tmp, path)
def exchange(a, b):
    if where == "between the two renames":
        return False  # as on a system without renameat2
    done = real_exchange(a, b)
    if count[0] == 2 and where == "after the swap":
        die()
    return done
def os_replace(src, dst):
    real_os_replace(src, dst)
    if count[0] == 2 and where == "between the two renames" and str(dst).endswith(".old.tmp"):
        die()
def remove(path):
    if count[0] == 2 and where == "while deleting the old version":
        victims = sorted(p for p in path.rglob("*") if p.is_file())
        victims[0].unlink()
        die()
    shutil.rmtree(path)
io.replace, io._exchange, io._remove, os.replace = replace, exchange, remove, os_replace
runpy.run_path(sys.argv[0], run_name="__main__")
"""
)


KILL_POINTS = ["before the swap", "after the swap", "while deleting the old version", "between the two renames"]


@pytest.mark.parametrize("where", KILL_POINTS)
def test_a_kill_inside_a_folder_replacement_leaves_one_whole_version(tmp_path, monkeypatch, where):
    """io.replace killed (SIGKILL: no handler runs) at each point, in a child forked from this process that does
    only the file operations; then recover(), as the next run's claim does, leaves one whole version, the old
    or the new, and nothing beside it."""
    from alignkit import io

    def version(root, step):
        (root / "sub").mkdir(parents=True)
        for name, text in (("checkpoint.json", f"step {step}"), ("sub/state.pt", f"state {step}" * 500)):
            (root / name).write_text(text)

    def tree(root):
        return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}

    path = tmp_path / "checkpoints"
    version(path, 2)
    new = tmp_path / ".checkpoints.abcd1234.tmp"
    version(new, 4)
    old_tree, new_tree = tree(path), tree(new)
    pid = os.fork()
    if pid == 0:  # the child: patch, replace, and be killed where the test says
        try:
            die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
            real_exchange, real_os_replace, real_remove = io._exchange, os.replace, io._remove

            def exchange(a, b):
                if where == "between the two renames":
                    return False  # as on a system without renameat2
                if where == "before the swap":
                    die()
                done = real_exchange(a, b)
                if where == "after the swap":
                    die()
                return done

            def os_replace(src, dst):
                real_os_replace(src, dst)
                if where == "between the two renames" and str(dst).endswith(".old.tmp"):
                    die()

            def remove(victim):
                if where == "while deleting the old version":
                    sorted(p for p in victim.rglob("*") if p.is_file())[0].unlink()
                    die()
                real_remove(victim)

            io._exchange, os.replace, io._remove = exchange, os_replace, remove
            io.replace(new, path)
        finally:
            os._exit(0)  # not killed: the test fails below
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert io.strays(path)  # what the kill left beside the folder
    io.recover(path)
    assert io.strays(path) == [] and not new.exists()
    expected = {"before the swap": old_tree, "between the two renames": old_tree}.get(where, new_tree)
    assert tree(path) == expected


@pytest.mark.slow
@pytest.mark.parametrize("where", KILL_POINTS)
def test_a_kill_inside_a_folder_replacement_leaves_a_complete_checkpoint(
    prepared_sample, uninterrupted, tmp_path, where
):
    wrapper = tmp_path / "kill-in-replace.py"
    wrapper.write_text(KILL_IN_REPLACE)
    out = tmp_path / "run"
    out.mkdir()
    killed = run_reward(prepared_sample, out, wrapper, {"KILL_WHERE": where, "KILL_DIR": str(out / "checkpoints")})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert stray_temporaries(out)  # what the kill left beside the checkpoint folder
    resumed = run_reward(prepared_sample, out)
    assert resumed.returncode == 0, resumed.stderr
    step = {"before the swap": 2, "between the two renames": 2}.get(where, 4)  # the version in place at the kill
    assert f"resumed from checkpoint at step {step}\n" in resumed.stdout, resumed.stdout
    assert stray_temporaries(out) == []
    same_outputs(out, uninterrupted)


def footprint(root):
    """Bytes a tree takes on tmpfs: each file and directory in whole pages."""
    root = Path(root)
    files = [root, *root.rglob("*")] if root.is_dir() else [root]
    return sum(-(-p.stat().st_size // 4096) * 4096 if p.is_file() else 4096 for p in files)


TREE_HASHES = (
    "import hashlib, json, pathlib, sys; root = pathlib.Path(sys.argv[1]); print(json.dumps({"
    "str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*'))"
    " if p.is_file()}))"
)


@pytest.mark.parametrize("full_at", ["a checkpoint", "the final save"])
def test_a_write_that_finds_the_disk_full_keeps_every_earlier_output_and_names_the_path(
    prepared_sample, uninterrupted, tmp_path, monkeypatch, full_at
):
    """In this process: the step-6 checkpoint's or the final save's write fails with ENOSPC, as on a full disk
    (the real tmpfs is the slow test below). The one line names the output, not a temporary; the earlier
    outputs and the step-4 checkpoint are byte for byte as they were, no temporary is left; the rerun resumes
    and ends as an uninterrupted run."""
    import errno

    import safetensors.torch

    import alignkit.reward as reward

    out = stopped_here_at_step_4(prepared_sample, tmp_path / "run", monkeypatch)
    shutil.copytree(uninterrupted / "model", out / "model")  # the earlier run's outputs
    shutil.copy(uninterrupted / "reward.json", out / "reward.json")
    # what was there before the write that failed: the earlier outputs, and the step-4 checkpoint where the
    # step-6 one fails (where the final save fails, the checkpoints of steps 6 and 8 were written before it)
    kept = [out / "model", out / "reward.json"] + [out / "checkpoints"] * (full_at == "a checkpoint")

    def snapshot():
        files = [p for k in kept for p in ([k] if k.is_file() else sorted(k.rglob("*"))) if p.is_file()]
        return {p: p.read_bytes() for p in files}

    before = snapshot()

    def half_written(path):  # a file begun, then no room for the rest
        Path(path).write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    target = {"a checkpoint": "checkpoints", "the final save": "model"}[full_at]
    with monkeypatch.context() as patch:
        if full_at == "a checkpoint":  # the model's weights of the step-6 checkpoint
            patch.setattr(safetensors.torch, "save_file", lambda weights, path, *a, **k: half_written(path))
        else:  # the reward model's weights, at the end
            patch.setattr(reward, "save_reward_model", lambda *args: half_written(args[3]))
        done = run_reward_in_process(prepared_sample, out)
    step = {"a checkpoint": 4, "the final save": 8}[full_at]
    assert (
        done.returncode == 2
        and "Traceback" not in done.stderr
        and done.stderr.strip().splitlines()[-1]
        == (
            f"error: reward: cannot write {out / target}: No space left on device; outputs are written whole or not "
            f"at all, so every earlier one is as it was; `dvc repro` resumes it from the checkpoint at step {step} in "
            f"{out / 'checkpoints'}"
        )
    ), done.stderr
    assert snapshot() == before and stray_temporaries(out) == []
    info = json.loads((out / "checkpoints" / "checkpoint.json").read_text())
    assert info["complete"] is False and info["step"] == step
    assert run_reward_in_process(prepared_sample, out).returncode == 0
    same_outputs(out, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("full_at", ["a checkpoint", "the final save"])
def test_a_full_disk_is_one_line_and_keeps_the_outputs_and_checkpoint(
    prepared_sample, uninterrupted, tmp_path, full_at
):
    """An earlier run's outputs and its step-4 checkpoint; the rerun's outputs named in `on_tmpfs` live on a small
    tmpfs (in a private mount namespace), which it fills: at its first checkpoint there (step 6) or at the final save.
    It stops with one line naming the path, and what was on the tmpfs is byte for byte as it was, nothing beside
    it. With room again it resumes and ends as an uninterrupted run."""
    out = stopped_at_step_4(prepared_sample, tmp_path / "run")
    shutil.copytree(uninterrupted / "model", out / "model")  # the earlier run's outputs
    shutil.copy(uninterrupted / "reward.json", out / "reward.json")
    if full_at == "a checkpoint":  # half a checkpoint more than is there does not fit
        on_tmpfs, size = ["checkpoints", "model", "reward.json"], footprint(out / "checkpoints") * 3 // 2
        size += footprint(out / "model") + footprint(out / "reward.json")
    else:  # nor does a second copy of the model
        on_tmpfs, size = ["model"], footprint(out / "model") * 3 // 2
    full = tmp_path / "full"
    full.mkdir()
    argv = reward_argv(prepared_sample, out)
    for name in on_tmpfs:  # the stage writes those outputs on the tmpfs
        argv[argv.index(str(out / name))] = str(full / name)
    moved = " ".join(str(out / name) for name in on_tmpfs)
    stage = " ".join([sys.executable, str(REPO / "stages" / "reward.py"), *argv])
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {full} && cp -a {moved} {full}/ && rm -rf {moved} && "
        f'{sys.executable} -c "{TREE_HASHES}" {full} > {tmp_path}/before.json && '
        f"{{ {stage} 2> {tmp_path}/stderr; echo $? > {tmp_path}/rc; }} && "
        f'{sys.executable} -c "{TREE_HASHES}" {full} > {tmp_path}/after.json && ls -a {full} > {tmp_path}/ls && '
        f"cp -a {' '.join(str(full / name) for name in on_tmpfs)} {out}/"
    )  # back, as if the disk had room again
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=stage_env(), timeout=600
    )
    assert done.returncode == 0, done.stderr
    stderr = (tmp_path / "stderr").read_text()
    assert (tmp_path / "rc").read_text().strip() == "2", stderr
    target, step = {"a checkpoint": ("checkpoints", 4), "the final save": ("model", 8)}[full_at]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == (
        f"error: reward: cannot write {full / target}: No space left on device; outputs are written whole or not "
        f"at all, so every earlier one is as it was; `dvc repro` resumes it from the checkpoint at step {step} in "
        f"{argv[argv.index('--checkpoints') + 1]}"
    ), stderr
    before, after = (json.loads((tmp_path / f"{w}.json").read_text()) for w in ("before", "after"))
    assert after == before and len(before) > 3  # not even the stage's lock files (alignkit.io.claim) remain
    assert not [n for n in (tmp_path / "ls").read_text().split() if n.endswith(".tmp")]
    info = json.loads((out / "checkpoints" / "checkpoint.json").read_text())
    assert info["complete"] is False and info["step"] == step
    resumed = run_reward(prepared_sample, out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint at step {step}\n" in resumed.stdout
    same_outputs(out, uninterrupted)


def test_an_output_folder_that_is_a_mount_point_is_refused_at_once_in_one_line(prepared_sample, tmp_path):
    """A mount point (a tmpfs here; a Docker volume mounted on checkpoints/dpo alike) cannot be renamed, so its
    first replacement would fail with EBUSY after training had begun: the claim refuses it before anything loads."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    write_params(out / "params.yaml", reward=SHORT)
    stage = " ".join([sys.executable, str(REPO / "stages" / "reward.py"), *reward_argv(prepared_sample, out)])
    script = (
        f"mount -t tmpfs tmpfs {out / 'checkpoints'} && {{ {stage} 2> {tmp_path}/stderr; echo $? > {tmp_path}/rc; }}"
        f" && ls -a {out / 'checkpoints'} > {tmp_path}/ls"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=stage_env(), timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rc").read_text().strip() == "2"
    assert (tmp_path / "stderr").read_text().strip() == (
        f"error: {out / 'checkpoints'}: is a mount point, and a stage replaces an output folder by renaming it; "
        "mount the folder above it instead"
    )
    assert (tmp_path / "ls").read_text().split() == [".", ".."]  # nothing written into it
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "params.yaml"]  # nor beside it


LIVES_FOR = """import sys, time
from alignkit import lifeline
lifeline.watch()
import os
print(os.getpid(), lifeline._watched[2], flush=True)
while True:
    lifeline.check()
    time.sleep(0.05)
"""


def test_a_stage_stops_once_the_dvc_process_above_it_is_gone_even_with_a_shell_between(tmp_path):
    """watch() finds the nearest `dvc` ancestor past a shell that did not exec (as `sh -c 'a; b'` does not);
    check() raises Orphaned once that process is gone, though the shell, its parent, lives on."""
    (tmp_path / "child.py").write_text(LIVES_FOR)
    fake = tmp_path / "dvc"  # a process whose argv names dvc, as the console script's does
    fake.write_text(
        f"#!{sys.executable}\nimport subprocess\n"
        f"subprocess.run(['sh', '-c', 'true; {sys.executable} {tmp_path / 'child.py'}; sleep 60'])\n"
    )
    fake.chmod(0o755)
    proc = subprocess.Popen(
        [str(fake)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stage_env(), start_new_session=True
    )
    try:
        child, watched = proc.stdout.readline().split(" ", 1)
        assert watched.strip() == f"the dvc process that started it (pid {proc.pid})"
        shell = int(Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[1])
        assert shell != proc.pid and alive(shell)  # a shell between them
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the stage outlived the dvc process above it"
        assert alive(shell)  # its own parent lives: only the dvc process's death stopped it
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


BY_HAND = """import time
from alignkit import lifeline
from alignkit.stage import run_stage


def main(argv):
    lifeline.watch()
    print("watched:", lifeline._watched, flush=True)
    while True:
        lifeline.check()
        time.sleep(0.05)


run_stage(main)
"""


def test_a_stage_started_by_hand_runs_on_under_nohup_after_its_shell_is_gone(tmp_path):
    """No dvc above it, nothing is watched: started with nohup by a shell that then exits, the stage runs on,
    and the terminal's SIGHUP (ignored under nohup) does not stop it."""
    (tmp_path / "stage.py").write_text(BY_HAND)
    started = subprocess.run(
        ["sh", "-c", f"nohup {sys.executable} {tmp_path / 'stage.py'} > {tmp_path / 'out'} 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        env=stage_env(),
        timeout=60,
    )
    pid = int(started.stdout)  # the shell has exited: the stage's parent is gone
    try:
        deadline = time.monotonic() + 60
        while "watched:" not in (tmp_path / "out").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "watched: None" in (tmp_path / "out").read_text()
        os.kill(pid, signal.SIGHUP)
        time.sleep(2)
        assert alive(pid), (tmp_path / "out").read_text()
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_stage_started_by_hand_stops_on_sighup_in_one_line(tmp_path):
    """Without nohup, the terminal's SIGHUP stops a stage as SIGTERM does: one line, exit 128 + 1."""
    (tmp_path / "stage.py").write_text(BY_HAND)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "stage.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=stage_env(),
        start_new_session=True,
        # SIGHUP as a terminal leaves it, even where this test itself runs under nohup (which the child would inherit)
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    assert proc.stdout.readline().strip() == "watched: None"
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129
    assert err.strip() == "stage: stopped (SIGHUP); none of its outputs was written, `dvc repro` runs it again"


def test_written_files_get_the_users_permissions(tmp_path):
    """safetensors and tempfile write private files (0600); outputs get what the umask gives a plain open()."""
    import torch
    from safetensors.torch import save_file

    from alignkit.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")
            (tmp / "sub").mkdir(mode=0o700)
        write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "model" / "sub").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644


def test_a_stage_run_by_hand_with_its_input_missing_says_so_in_one_line(tmp_path):
    missing = tmp_path / "prepared"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "sft.py"),
            "--params",
            str(REPO / "params.yaml"),
            "--data",
            str(missing),
            "--out",
            str(tmp_path / "sft"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--live",
            str(tmp_path / "live"),
            "--checkpoints",
            str(tmp_path / "ck"),
        ],
        capture_output=True,
        text=True,
        env=stage_env(),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: sft: {missing}")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow
@pytest.mark.same_run_only
def test_a_rerun_under_a_competing_cpu_load_gives_the_same_bytes(prepared_sample, uninterrupted, tmp_path):
    """Bit-identical on one machine, whatever its load: the short reward run again while four busy processes
    compete for the two cores gives the same validation curve (step 0 included, where a load-dependent thread
    count once showed) and the same model bytes. The stage pins its threads (stage.pin_threads)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        done = run_reward(prepared_sample, tmp_path)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert done.returncode == 0, done.stderr
    for name in ("model/reward_model.pth", "reward.json", "live/plots/metrics/val/loss.tsv"):
        assert (tmp_path / name).read_bytes() == (uninterrupted / name).read_bytes(), name


def test_pin_threads_turns_off_openmps_dynamic_adjustment():
    """OpenMP may otherwise run a parallel region on fewer threads than asked for; off, and torch's count kept."""
    script = (
        "import ctypes, torch\nfrom pathlib import Path\nfrom alignkit.stage import pin_threads\n"
        "gomp = ctypes.CDLL(str(Path(torch.__file__).parent / 'lib' / 'libgomp.so.1'))\n"
        "gomp.omp_set_dynamic(1)\nbefore = gomp.omp_get_dynamic()\nthreads = pin_threads()\n"
        "print(before, gomp.omp_get_dynamic(), threads == torch.get_num_threads() > 0)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=stage_env(), timeout=120)
    assert done.stdout.split() == ["1", "0", "True"], done.stderr
