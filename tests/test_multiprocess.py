"""`accelerate launch --num_processes 2` on a CPU (gloo): the same result as one process with the
same global batch, and only the main process writes.

Two processes with `batch_size: 8` each make a global batch of 16, as one process with
`batch_size: 16` does; the data order is the same (accelerate deals the seeded batches
out in turn). The warmup is 0 so both schedules are identical step for step (the
one-process warmup of round(0.1 x 4) = 0 steps is not round(0.1 x 8) / 2 = half a step).
"""

import json
import subprocess
import sys

import pytest
from transformers import BertConfig, BertModel

from alignkit.conversation import as_text
from alignkit.data import read_split
from alignkit.models import train_bert_tokenizer
from tests.conftest import REPO, stage_env, write_params

TRAIN_PAIRS = 64  # a multiple of the global batch, so no process gets a padded last batch
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def small_data(prepared_sample, tmp_path_factory):
    """A prepared root whose helpful/ set is a few pairs of the sample."""
    out = tmp_path_factory.mktemp("mp-data")
    (out / "helpful").mkdir()
    for name, keep in (("train", TRAIN_PAIRS), ("validation", 40), ("test", 10)):
        lines = (prepared_sample / f"{name}.jsonl").read_text().splitlines(keepends=True)
        (out / "helpful" / f"{name}.jsonl").write_text("".join(lines[:keep]))
    return out


@pytest.fixture(scope="module")
def dropout_free_bert(small_data, tmp_path_factory):
    """A local tiny BERT without dropout, so one process and two draw no different dropout masks."""
    texts = [
        t for p in read_split(small_data / "helpful" / "train.jsonl") for t in (as_text(p.prompt), p.chosen, p.rejected)
    ]
    tokenizer = train_bert_tokenizer(texts, 1000)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    out = tmp_path_factory.mktemp("mp-bert") / "bert"
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run(stage, args, processes, tmp_path):
    env = stage_env() | {"OMP_NUM_THREADS": "1"}
    script = str(REPO / "stages" / f"{stage}.py")
    if processes == 1:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
            script,
            *args,
        ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def outputs(stage, out):
    common = [
        "--metrics",
        str(out / "metrics.json"),
        "--live",
        str(out / "live"),
        "--checkpoints",
        str(out / "checkpoints"),
    ]
    if stage == "reward":
        return ["--name", "helpful", "--out", str(out / "reward"), *common]
    return ["--out", str(out / "model"), *common]


@pytest.mark.slow
@pytest.mark.same_run_only
@pytest.mark.parametrize(
    "stage, loss_type", [("reward", None), ("dpo", "sigmoid"), ("dpo", "simpo"), ("dpo", "bco_pair"), ("dpo", "kto")]
)
def test_two_processes_match_one_with_the_same_global_batch(
    stage, loss_type, small_data, dropout_free_bert, sft_model, tmp_path
):
    """Every objective too: SimPO (no reference), bco_pair (its running mean gathered from both processes), KTO (its
    KL estimate averaged over them; the pairs unpaired into twice as many examples)."""
    steps = TRAIN_PAIRS // 16 * (2 if loss_type == "kto" else 1)
    metrics, printed = {}, {}
    for processes, batch_size in ((1, 16), (2, 8)):
        out = tmp_path / f"p{processes}"
        section = {"epochs": 1, "batch_size": batch_size, "warmup_ratio": 0.0, "checkpoint_every": 2}
        if loss_type:
            section["loss_type"] = loss_type
        params = write_params(
            tmp_path / f"params{processes}.yaml",
            **{stage: section},
            models={"policy": "tiny-gpt2", "reward": str(dropout_free_bert)},
        )
        inputs = ["--params", str(params), "--data", str(small_data / "helpful" if stage == "reward" else small_data)]
        if stage == "dpo":
            inputs += ["--sft", str(sft_model / "sft")]
        printed[processes] = run(stage, inputs + outputs(stage, out), processes, tmp_path)
        metrics[processes] = json.loads((out / "metrics.json").read_text())

        # Only the main process wrote: one summary line, one row per optimizer step in the curves.
        assert printed[processes].count(f"{'reward@helpful' if stage == 'reward' else stage}: val ") == 1, printed[
            processes
        ]
        curve = (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
        assert len(curve) == 1 + steps, curve
        assert json.loads((out / "checkpoints" / "checkpoint.json").read_text())["step"] == steps

    for key in ("train_loss", "val_loss"):
        assert metrics[2][key] == pytest.approx(metrics[1][key], abs=TOLERANCE), (key, metrics)


@pytest.mark.slow
@pytest.mark.same_run_only
def test_two_processes_take_the_online_step_one_process_takes(small_data, sft_model, reward_model, tmp_path):
    """Each process samples whole groups of its share of a step's prompts (each group seeded by its place in the
    step), and the loss is normalised over the whole rollout: two processes train what one does."""
    metrics = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        section = {"max_steps_per_epoch": 3, "prompts_per_step": 2, "warmup_ratio": 0.0, "checkpoint_every": 1}
        params = write_params(tmp_path / f"params{processes}.yaml", online=section)
        inputs = ["--params", str(params), "--data", str(small_data), "--sft", str(sft_model / "sft")]
        inputs += ["--rewards", str(reward_model / "models")]
        printed = run("online", inputs + outputs("online", out), processes, tmp_path)
        metrics[processes] = json.loads((out / "metrics.json").read_text())
        assert printed.count("online (grpo): held-out reward") == 1, printed  # only the main process wrote
        curve = (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
        assert len(curve) == 1 + 3, curve
    assert metrics[2]["answers_generated"] == metrics[1]["answers_generated"] == 3 * 2 * 4
    for key in ("train_reward", "kl", "clipfrac", "val_reward_after", "response_length"):
        assert metrics[2][key] == pytest.approx(metrics[1][key], abs=TOLERANCE), (key, metrics)
