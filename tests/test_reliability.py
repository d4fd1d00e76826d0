"""Reliability: identical reruns, resume after SIGKILL, the non-finite-loss guard.

The DVC runs use a reduced pipeline (240 data rows, small batches, frequent
checkpoints) in temporary copies of the repository.
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
from tests.conftest import copy_repo, dvc, stage_env, stage_main, write_params

REDUCED = {
    "reward": {"epochs": 2, "batch_size": 4, "checkpoint_every": 5},
    "sft": {"epochs": 2, "batch_size": 4, "checkpoint_every": 5},
    "dpo": {"epochs": 1, "batch_size": 4, "checkpoint_every": 5},
    "ppo": {"max_steps_per_epoch": 6, "batch_size": 4, "mini_batch_size": 2, "gradient_accumulation_steps": 2,
            "checkpoint_every": 2},
}
ROWS = 240
OUTPUTS = {"reward@helpful": ["models/reward/helpful"], "sft": ["models/sft"], "dpo": ["models/dpo"],
           "ppo": ["models/ppo"]}


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


@pytest.mark.same_run_only
def test_two_clean_runs_give_identical_metrics_and_models(reduced_repo, tmp_path):
    """A forced rerun of every stage reproduces every metrics file byte for byte, and dvc.lock
    (which holds the hash of every model) is unchanged."""
    repo = private_copy(reduced_repo, tmp_path)
    dvc(repo, "repro", "-f")
    first = metrics_files(reduced_repo)
    assert len(first) == 10  # data/{helpful,safety}, reward/{helpful,safety}, sft, dpo, ppo, eval/{sft,ppo,dpo}
    assert metrics_files(repo) == first
    assert (repo / "dvc.lock").read_text() == (reduced_repo / "dvc.lock").read_text()


def kill_when_checkpointed(repo, stage, every):
    """Start `dvc repro -f -s stage`, SIGKILL its whole process group once the stage has written
    a checkpoint, and return the step of that checkpoint."""
    info = repo / "checkpoints" / stage.replace("@", "/") / "checkpoint.json"
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", stage], cwd=repo, env=stage_env(repo),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
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


@pytest.mark.same_run_only
@pytest.mark.parametrize("stage", ["reward@helpful", "sft", "dpo", "ppo"])
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
    assert json.loads((repo / "checkpoints" / stage.replace("@", "/") / "checkpoint.json").read_text())["complete"] is True


def test_a_non_finite_loss_stops_the_stage_naming_the_step_and_keeps_the_last_checkpoint(
        prepared_sample, tmp_path, monkeypatch):
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
        stage_main("reward")(["--params", str(params), "--name", "helpful", "--data", str(prepared_sample),
                              "--out", str(out / "reward"),
                              "--metrics", str(out / "reward.json"), "--live", str(out / "live"),
                              "--checkpoints", str(out / "checkpoints")])
    message = str(err.value)
    assert message.startswith("reward: the loss is nan at step 5 (epoch 0)"), message
    assert "last good checkpoint is kept (step 4 in" in message and "\n" not in message
    info = json.loads((out / "checkpoints" / "checkpoint.json").read_text())
    assert info["step"] == 4 and info["complete"] is False
    assert (out / "checkpoints" / "model.safetensors").is_file()
    assert not (out / "reward").exists() and not (out / "reward.json").exists()


def test_resume_skips_a_checkpoint_of_other_params(prepared_sample, tmp_path):
    """A checkpoint whose fingerprint differs (here: another lr) is not resumed: training starts at step 0."""
    from alignkit.checkpoint import stage_checkpointer
    from alignkit.params import load_params
    from alignkit.training import make_accelerator

    accelerator = make_accelerator("fp32", "reward.precision")
    a = load_params(write_params(tmp_path / "a.yaml", reward={"lr": 1e-3}))
    b = load_params(write_params(tmp_path / "b.yaml", reward={"lr": 2e-3}))
    c = load_params(write_params(tmp_path / "c.yaml", reward={"lr": 1e-3, "checkpoint_every": 7}))
    fp = [stage_checkpointer(tmp_path / "ck", "reward", p, accelerator, [prepared_sample]).fingerprint
          for p in (a, b, c)]
    assert fp[0] != fp[1]
    assert fp[0] == fp[2]  # how often checkpoints are written changes nothing about the result
    Path(tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps({"step": 3, "fingerprint": fp[1], "complete": False}))
    assert stage_checkpointer(tmp_path / "ck", "reward", a, accelerator, [prepared_sample]).load(None) is None
