"""What a user sees while stages run: progress bars on the long loops, no warning they can do nothing about,
and one line on Ctrl-C or SIGTERM that says where `dvc repro` picks up."""

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkit.data import read_split
from alignkit.errors import interrupted_message
from tests.conftest import REPO, stage_env, write_params

TOKENIZER_WARNING = "Token indices sequence length is longer than the specified maximum sequence length"


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as under `dvc repro` in a shell: tqdm (disable=None) draws there."""

    def isatty(self):
        return True


def reward_stage(params, data, out, env=None, sigint_ignored=False):
    """The reward stage in a subprocess; sigint_ignored: started as a shell's `cmd &` without job control starts
    it (a script, a job runner, a test suite run in the background), with SIGINT ignored."""
    argv = [sys.executable, str(REPO / "stages" / "reward.py"), "--params", str(params), "--name", "helpful"]
    argv += ["--data", str(data), "--out", str(out / "model"), "--metrics", str(out / "reward.json")]
    argv += ["--live", str(out / "live"), "--checkpoints", str(out / "checkpoints")]
    if sigint_ignored:
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stage_env() | (env or {})
    )


def wait_for(path, proc, seconds):
    """Wait until `path` exists while `proc` runs; fail, with what it printed, if it ends or the time runs out
    first (a loaded machine may need minutes)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None or not path.exists():
        proc.kill()
        pytest.fail(f"{path} not written within {seconds}s (exit code {proc.poll()}): {proc.communicate()}")


def stopped(proc, seconds):
    """(stdout, stderr) of `proc` once it exits; fail if it is still running after `seconds`."""
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {seconds}s after the signal: {proc.communicate()}")


@pytest.mark.parametrize(
    "sig, code, why",
    [
        # Ctrl-C in the slow tier: the fast one keeps SIGTERM, which takes the same way out
        pytest.param(signal.SIGINT, 130, "interrupted (Ctrl-C)", marks=pytest.mark.slow),
        (signal.SIGTERM, 143, "stopped (SIGTERM)"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_prints_one_line_naming_the_checkpoint_that_dvc_repro_resumes_from(
    prepared_sample, tmp_path, sig, code, why
):
    """SIGTERM (`kill`, a scheduler's notice before SIGKILL) stops a stage as Ctrl-C does; both remove its lock
    files on the way out. The Ctrl-C case starts the stage with SIGINT ignored, as a shell's `&` without job
    control leaves it: even so it stops (it once trained on to the end), and from a terminal, where SIGINT
    is not ignored, it stops the same way."""
    params = write_params(tmp_path / "params.yaml", reward={"epochs": 2, "batch_size": 4, "checkpoint_every": 5})
    out = tmp_path / "out"
    proc = reward_stage(params, prepared_sample, out, {"DVC_STAGE": "reward@helpful"}, sig == signal.SIGINT)
    info = out / "checkpoints" / "checkpoint.json"
    wait_for(info, proc, 900)
    locks = [".checkpoints.lock", ".live.lock", ".model.lock", ".reward.json.lock"]
    assert sorted(p.name for p in out.glob(".*.lock")) == locks
    proc.send_signal(sig)  # SIGINT: what Ctrl-C sends, to the stage DVC runs
    stdout, stderr = stopped(proc, 600)  # seconds where nothing is loaded; the limit is for a loaded machine
    step = json.loads(info.read_text())["step"]  # the last checkpoint written, perhaps after the one first seen
    assert proc.returncode == code
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"reward@helpful: {why}; `dvc repro` resumes it from the checkpoint at step {step} in {out / 'checkpoints'}"
    )
    assert not (out / "model").exists() and not (out / "reward.json").exists()  # nothing half-written
    assert list(out.glob(".*.lock")) == []


def test_the_interrupt_line_says_when_nothing_can_be_resumed():
    class Checkpointer:
        step, dir = None, Path("checkpoints/sft")

    assert interrupted_message("evaluate@dpo", None) == (
        "evaluate@dpo: interrupted (Ctrl-C); none of its outputs was written, `dvc repro` runs it again"
    )
    assert interrupted_message("sft", Checkpointer) == (
        "sft: interrupted (Ctrl-C) before its first checkpoint; `dvc repro` runs it again from step 0"
    )


@pytest.mark.slow
def test_a_pretrained_encoder_with_a_maximum_length_gets_no_tokenizer_warning(prepared_sample, tmp_path):
    """A real encoder's tokenizer has a model_max_length (bert-base-uncased: 512) that long texts exceed before
    they are cut to reward.max_length; tokenised with truncation, they never make a too-long sequence. Here the
    tiny-bert preset saved as a local directory with model_max_length 24, and reward.max_length 24: most answers of
    the sample are longer than that."""
    from alignkit.models import load_encoder

    texts = [p.prompt[-1].content + " " + p.chosen for p in read_split(prepared_sample / "train.jsonl")]
    encoder, tokenizer = load_encoder("tiny-bert", texts=texts, seed=0)
    tokenizer.model_max_length = 24
    encoder.save_pretrained(tmp_path / "encoder")
    tokenizer.save_pretrained(tmp_path / "encoder")
    assert sum(len(tokenizer(t)["input_ids"]) > 24 for t in texts[:200]) > 50  # the case the warning is about

    params = write_params(
        tmp_path / "params.yaml",
        models={"policy": "tiny-gpt2", "reward": str(tmp_path / "encoder")},
        reward={"max_steps": 5, "max_length": 24},
    )  # every pair is tokenised before step 1
    proc = reward_stage(params, prepared_sample, tmp_path / "out")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert TOKENIZER_WARNING not in stderr + stdout
    assert "val accuracy" in stdout


def test_long_loops_draw_progress_bars_on_a_terminal(reward_model, sft_model, prepared_sample, monkeypatch):
    """Reference log-probs, generation, log-prob scoring and reward scoring each draw a bar on a terminal."""
    from alignkit.dpo import encode_pairs, reference_logps
    from alignkit.evaluation import answer_logps, generate
    from alignkit.modeldir import load_policy
    from alignkit.policy import prepare_tokenizer
    from alignkit.reward import RewardScorer
    from alignkit.training import make_accelerator

    pairs = read_split(prepared_sample / "test.jsonl")[:20]
    policy, tokenizer = load_policy(str(sft_model / "sft"))
    prepare_tokenizer(tokenizer)
    scorer = RewardScorer(
        reward_model / "models" / "helpful" / "reward_model.pth", reward_model / "models" / "helpful", batch_size=8
    )
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    encoded, _ = encode_pairs(tokenizer, pairs, 64, 48)
    reference_logps(
        policy,
        encoded,
        tokenizer.pad_token_id,
        8,
        make_accelerator("fp32", "dpo.precision"),
        "dpo: reference log-probs (train)",
    )
    gen = {"temperature": 0.7, "top_p": 0.95, "top_k": 0, "max_new_tokens": 8}
    _, ids = generate(policy, tokenizer, [p.prompt for p in pairs], gen, 8, 0, "generate sft", 48)
    answer_logps(policy, tokenizer, [p.prompt for p in pairs], ids, 8, 48, "log-probs sft")
    scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs], "score sft (helpful)")
    scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs])  # a PPO step's batch: no bar
    drawn = terminal.getvalue()
    for label in ("dpo: reference log-probs (train)", "generate sft", "log-probs sft", "score sft (helpful)"):
        assert f"\r{label}:   0%|          | 0/3 [" in drawn, label  # 20 prompts in 3 batches of 8
    assert drawn.count("score sft (helpful):") == 1 and drawn.count("0/3 [") == 4
