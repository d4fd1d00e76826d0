"""SFT and DPO stages end to end on the sample, and DPO's use of its frozen reference."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from alignkit.conversation import FITTED, plain_answer, plain_prompt, single_turn
from alignkit.data import read_split
from alignkit.dpo import PairCollator, PairObjective, encode_pairs, make_step, reference_logps, train_dpo
from alignkit.modeldir import load_policy
from alignkit.policy import disable_dropout, prepare_tokenizer
from alignkit.training import make_accelerator
from tests.conftest import repo_params, stage_main, write_params


@pytest.fixture(scope="module")
def trained(sft_model, prepared_root, tmp_path_factory):
    """The shortened SFT run, and DPO from it with the default params but one epoch."""
    out = tmp_path_factory.mktemp("dpo")
    params = write_params(out / "params.yaml", dpo={"epochs": 1})
    stage_main("dpo")(
        [
            "--params",
            str(params),
            "--data",
            str(prepared_root),
            "--sft",
            str(sft_model / "sft"),
            "--out",
            str(out / "dpo"),
            "--metrics",
            str(out / "dpo.json"),
            "--live",
            str(out / "live-dpo"),
            "--checkpoints",
            str(out / "checkpoints-dpo"),
        ]
    )
    for name in ("sft", "sft.json"):
        (out / name).symlink_to(sft_model / name)
    return out


def test_sft_lowers_validation_loss_on_preferred_answers(trained):
    metrics = json.loads((trained / "sft.json").read_text())
    assert metrics["val_loss"] < metrics["val_loss_before"] - 2.0
    assert math.isclose(metrics["val_perplexity"], math.exp(metrics["val_loss"]), rel_tol=1e-9)
    # What fitting into max_length did is counted; the sample's short questions all keep their place.
    assert set(metrics["fitted"]) == set(FITTED) and metrics["fitted"]["question_dropped"] == 0
    assert (trained / "sft" / "model.safetensors").is_file() and (trained / "sft" / "tokenizer.json").is_file()


def test_sft_model_writes_answers_in_the_sample_style(trained):
    model, tokenizer = load_policy(str(trained / "sft"))
    ids = tokenizer(plain_prompt(single_turn("What is the chemical symbol for gold?")), return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "chemical symbol for" in answer and answer.strip().endswith((".", "!")), answer


def test_dpo_validation_reward_accuracy(trained):
    metrics = json.loads((trained / "dpo.json").read_text())
    assert metrics["val_reward_accuracy"] >= 0.7
    assert metrics["val_loss"] < metrics["val_loss_before"]
    # Before training the policy is its reference: every implicit reward is 0, the loss log 2.
    assert math.isclose(metrics["val_loss_before"], math.log(2), abs_tol=1e-4)
    assert metrics["val_chosen_reward"] > metrics["val_rejected_reward"]
    assert set(metrics["fitted"]) == set(FITTED) and metrics["fitted"]["question_dropped"] == 0
    assert (trained / "dpo" / "model.safetensors").is_file()


def test_dpo_moves_the_policy_and_keeps_its_tokenizer(trained):
    sft, dpo = load_file(trained / "sft" / "model.safetensors"), load_file(trained / "dpo" / "model.safetensors")
    assert sft.keys() == dpo.keys()
    assert any(not torch.equal(sft[k], dpo[k]) for k in sft)
    assert (trained / "sft" / "tokenizer.json").read_bytes() == (trained / "dpo" / "tokenizer.json").read_bytes()


def test_sft_with_zero_epochs_saves_the_base_model_unchanged(prepared_root, prepared_sample, tmp_path):
    params = write_params(tmp_path / "params.yaml", sft={"epochs": 0})
    stage_main("sft")(
        [
            "--params",
            str(params),
            "--data",
            str(prepared_root),
            "--out",
            str(tmp_path / "sft"),
            "--metrics",
            str(tmp_path / "sft.json"),
            "--live",
            str(tmp_path / "live"),
            "--checkpoints",
            str(tmp_path / "checkpoints"),
        ]
    )
    train = read_split(prepared_sample / "train.jsonl")
    texts = [t for p in train for t in (plain_prompt(p.prompt), plain_answer(p.chosen), plain_answer(p.rejected))]
    base, _ = load_policy("tiny-gpt2", texts=texts, seed=repo_params()["seed"])
    saved = load_file(tmp_path / "sft" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in base.state_dict().items() if k in saved)
    metrics = json.loads((tmp_path / "sft.json").read_text())
    assert metrics["val_loss"] == metrics["val_loss_before"] and "train_loss" not in metrics


def test_reference_runs_once_before_training_and_step_zero_loss_is_log2(trained, prepared_sample, tmp_path):
    pairs = read_split(prepared_sample / "train.jsonl")[:24]
    policy, tokenizer = load_policy(str(trained / "sft"))
    reference, _ = load_policy(str(trained / "sft"))
    prepare_tokenizer(tokenizer)
    disable_dropout(policy.eval())
    disable_dropout(reference.eval()).requires_grad_(False)
    cfg = write_params(tmp_path / "params.yaml", dpo={"epochs": 1, "batch_size": 8, "eval_batch_size": 16})
    from alignkit.params import load_params

    cfg = load_params(cfg).dpo
    accelerator = make_accelerator("fp32", "dpo.precision")

    # Step 0: policy == reference, so the loss of any batch is log 2.
    encoded, _ = encode_pairs(tokenizer, pairs[:8], cfg.max_length, cfg.max_prompt_length)
    ref = reference_logps(reference, encoded, tokenizer.pad_token_id, 3, accelerator)  # other batching
    batch = PairCollator(tokenizer.pad_token_id)(
        [(c, r, (rc.item(), rr.item())) for (c, r), rc, rr in zip(encoded, *ref)]
    )
    with torch.no_grad():
        loss, logs = make_step(PairObjective(cfg))(policy, batch)
    assert math.isclose(loss.item(), math.log(2), abs_tol=1e-5)

    calls = {"reference": 0, "policy": 0}
    reference.register_forward_hook(lambda *a: calls.__setitem__("reference", calls["reference"] + 1))
    policy.register_forward_hook(lambda *a: calls.__setitem__("policy", calls["policy"] + 1))
    train_dpo(
        policy,
        lambda: reference,
        tokenizer,
        pairs[:16],
        pairs[16:],
        cfg,
        0,
        accelerator,
        tmp_path / "live",
    )
    # Reference: one pass over validation (8 pairs -> 1 batch) and train (16 -> 1 of 16): 2 forwards, then never.
    assert calls["reference"] == 2
    # Policy: 2 training steps of one concatenated forward each, plus validation before and after (1 batch each).
    assert calls["policy"] == 2 + 2
