"""The dpo stage's objectives on the sample's SFT model: reference-free ones load no reference, the reference runs
once or at every step to the same result, KTO learns from unpaired feedback with its KL term, and bco_pair's
running mean survives a resume."""

import dataclasses
import math

import pytest
import torch

from alignkit.adapters import prepare
from alignkit.conversation import single_turn
from alignkit.data import Feedback, Pair, feedback_pairs, read_split, unpair
from alignkit.errors import ParamsError
from alignkit.kto import desirable_weight_advice, encode_feedback, mismatches
from alignkit.modeldir import load_policy
from alignkit.params import load_params
from alignkit.policy import disable_dropout, prepare_tokenizer
from alignkit.preference import train_preferences
from alignkit.training import make_accelerator
from tests.conftest import REPO, write_params


@pytest.fixture(scope="module")
def pairs(prepared_sample):
    train = read_split(prepared_sample / "train.jsonl")
    return train[:32], read_split(prepared_sample / "validation.jsonl")[:16]


def run(sft_model, tmp_path, train, val, loads=None, checkpoint=None, **dpo):
    """train_preferences for a few steps; loads: a list that each reference load appends to."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = load_params(write_params(tmp_path / "params.yaml", dpo={"max_steps": 2, "batch_size": 8, **dpo})).dpo
    policy, tokenizer = load_policy(str(sft_model / "sft"))
    prepare_tokenizer(tokenizer)
    policy = disable_dropout(prepare(policy, cfg, "dpo", torch.device("cpu")))  # as the stage: an adapter, if any

    def load_reference():
        if loads is None:
            raise AssertionError("a reference-free objective loaded a reference")
        loads.append(1)
        return load_policy(str(sft_model / "sft"))[0]

    accelerator = make_accelerator("fp32", "dpo.precision")
    return train_preferences(
        policy, load_reference, tokenizer, train, val, cfg, 0, accelerator, tmp_path / "live", checkpoint
    )


@pytest.mark.parametrize("loss_type", ["simpo", "cpo", "orpo"])
def test_reference_free_objectives_load_no_reference(sft_model, pairs, tmp_path, loss_type):
    metrics, _ = run(sft_model, tmp_path, *pairs, loss_type=loss_type)  # load_reference raises if called
    assert metrics["objective"] == loss_type and metrics["reference"] == "none"
    assert 0 <= metrics["val_preference_accuracy"] <= 1
    assert ("val_nll" in metrics) == (loss_type in ("cpo", "orpo"))  # the NLL term is part of their loss


@pytest.mark.slow
def test_the_reference_precomputed_or_run_each_step_trains_alike(sft_model, pairs, tmp_path):
    loads = {True: [], False: []}
    metrics = {
        precompute: run(
            sft_model, tmp_path / str(precompute), *pairs, loads[precompute], precompute_ref_log_probs=precompute
        )[0]
        for precompute in (True, False)
    }
    assert metrics[True]["reference"] == "precomputed" and metrics[False]["reference"] == "each step"
    assert len(loads[True]) == len(loads[False]) == 1  # one frozen copy either way
    for key in ("train_loss", "val_loss", "val_preference_accuracy", "val_margin"):
        assert metrics[False][key] == pytest.approx(metrics[True][key], abs=1e-5), key
    assert metrics[True]["val_loss_before"] == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type, quantization", [("simpo", "nf4"), ("kto", "none"), ("bco_pair", "nf4")])
def test_each_objective_trains_an_adapter_and_the_reference_is_the_adapter_switched_off(
    sft_model, pairs, tmp_path, loss_type, quantization
):
    """With LoRA (QLoRA: an nf4 base) no second model is loaded for any objective: the reference, where there is
    one, is the policy with its adapter off; only the adapter trains."""
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "bias": "none"}
    loads = []
    train = unpair(pairs[0]) if loss_type == "kto" else pairs[0]
    metrics, policy = run(
        sft_model, tmp_path, train, pairs[1], loads, loss_type=loss_type, lora=lora, quantization=quantization
    )
    assert loads == [] and metrics["objective"] == loss_type
    assert metrics["reference"] == ("none" if loss_type == "simpo" else "precomputed")
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    if loss_type != "simpo":  # the adapter starts at zero: the policy is its reference, the loss its start value
        assert metrics["val_loss_before"] == pytest.approx(0.5 if loss_type == "kto" else 2 * math.log(2), abs=1e-5)


def test_a_paired_objective_on_unpaired_feedback_is_one_line_naming_the_key(sft_model, pairs, tmp_path):
    feedback = [dataclasses.replace(f, source="feedback") for f in unpair(pairs[0])]
    with pytest.raises(ParamsError, match=r"^dpo\.loss_type: 'simpo' trains on preference pairs, .*'feedback'"):
        run(sft_model, tmp_path, feedback, pairs[1], loss_type="simpo")


def test_kto_trains_on_unpaired_feedback_in_unequal_shares(sft_model, pairs, tmp_path):
    """Every chosen answer kept as desirable, one rejected in three as undesirable: 32 + 11 examples. At the start
    the policy is its reference, every implicit reward 0 and the KL estimate 0: each example's loss is
    1 - sigmoid(0) = 0.5, so the validation loss before training is 0.5."""
    train = [f for i, f in enumerate(unpair(pairs[0])) if f.desirable or i % 6 == 1]
    loads = []
    metrics, _ = run(sft_model, tmp_path, train, unpair(pairs[1]), loads, loss_type="kto")
    assert metrics["objective"] == "kto" and len(loads) == 1
    assert metrics["examples"] == {"desirable": 32, "undesirable": 11}
    assert metrics["val_loss_before"] == pytest.approx(0.5, abs=1e-6)
    assert metrics["val_loss"] < 0.5 and metrics["val_kl"] >= 0  # clamped at 0, as trl's
    assert metrics["val_pairs"] == 16  # the validation pairs, unpaired and paired again by prompt
    assert metrics["val_chosen_reward"] > metrics["val_rejected_reward"]


def test_kto_without_a_validation_prompt_of_both_kinds_reports_no_preference_accuracy(sft_model, pairs, tmp_path):
    """Validation feedback with desirable answers only: no pair to rank, so the accuracy is null, not a guess."""
    val = [f for f in unpair(pairs[1]) if f.desirable]
    metrics, _ = run(sft_model, tmp_path, unpair(pairs[0]), val, [], loss_type="kto", max_steps=1)
    assert metrics["val_pairs"] == 0 and metrics["val_preference_accuracy"] is None
    assert metrics["val_rejected_reward"] is None and metrics["val_chosen_reward"] is not None


@pytest.mark.slow
def test_bco_pairs_running_mean_survives_a_resume(sft_model, pairs, tmp_path, monkeypatch):
    """bco_pair measures each batch against a running mean of the rewards that every step moves: a run stopped
    after step 2 (checkpoint_every 1) and resumed ends with the weights of the uninterrupted run only because the
    checkpoint holds that mean."""
    from alignkit import loop
    from alignkit.checkpoint import Checkpointer

    accelerator = make_accelerator("fp32", "dpo.precision")
    args = {"loss_type": "bco_pair", "max_steps": 4}
    _, whole = run(sft_model, tmp_path / "whole", *pairs, [], **args)
    steps = {"n": 0}
    real_step = loop.train_step

    def stopping_step(*a, **k):
        if steps["n"] == 2:
            raise KeyboardInterrupt
        steps["n"] += 1
        return real_step(*a, **k)

    monkeypatch.setattr(loop, "train_step", stopping_step)
    with pytest.raises(KeyboardInterrupt):
        run(sft_model, tmp_path / "run", *pairs, [], Checkpointer(tmp_path / "ckpt", 1, "fp", accelerator), **args)
    monkeypatch.setattr(loop, "train_step", real_step)
    _, resumed = run(
        sft_model, tmp_path / "run", *pairs, [], Checkpointer(tmp_path / "ckpt", 1, "fp", accelerator), **args
    )
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- unpaired data, without a model


def _feedback(prompt, completion, desirable):
    return Feedback(single_turn(prompt), completion, desirable, 1)


def test_feedback_pairs_match_each_undesirable_answer_with_a_desirable_one_of_its_prompt():
    items = [
        _feedback("a", "good 1", True),
        _feedback("a", "bad 1", False),
        _feedback("a", "bad 2", False),
        _feedback("b", "good", True),  # no undesirable answer: no pair
        _feedback("c", "bad", False),  # no desirable answer: no pair
    ]
    pairs = feedback_pairs(items)
    assert [(p.chosen, p.rejected) for p in pairs] == [("good 1", "bad 1"), ("good 1", "bad 2")]
    pair = Pair(single_turn("q"), "yes", "no", 7)
    assert feedback_pairs([pair]) == [pair]  # pairs pass through
    assert [(f.completion, f.desirable) for f in unpair([pair])] == [("yes", True), ("no", False)]


def test_kl_examples_take_a_completion_of_another_prompt(sft_model):
    """Each example's KL example is its prompt with another prompt's completion (never its own prompt's: chosen
    and rejected answers of one pair share a prompt), seeded."""
    examples = unpair([Pair(single_turn(f"q{i}"), f"yes {i}", f"no {i}", i) for i in range(6)])
    other = mismatches(examples, 0)
    assert all(examples[j].prompt != examples[i].prompt for i, j in enumerate(other))
    assert other == mismatches(examples, 0) and other != mismatches(examples, 1)
    assert mismatches(examples[:2], 0) == [None, None]  # one prompt only: no mismatch to take
    _, tokenizer = load_policy(str(sft_model / "sft"))
    encoded, counts = encode_feedback(tokenizer, examples[:2], 64, 32, 0)
    assert encoded == [] and counts["no_mismatch"] == 2


def test_desirable_weight_advice_follows_trls_range():
    """trl 0.11.4: desirable_weight x #desirable / (undesirable_weight x #undesirable) in [1, 4/3]."""
    cfg = load_params(REPO / "params.yaml").dpo
    good, bad = _feedback("a", "x", True), _feedback("a", "y", False)
    assert desirable_weight_advice([good] * 11 + [bad] * 10, cfg) is None  # 1.1
    advice = desirable_weight_advice([good] * 20 + [bad] * 10, cfg)  # 2.0: desirable_weight in [0.5, 0.67]
    assert advice.startswith("dpo.desirable_weight: 20 desirable and 10 undesirable") and "[0.50, 0.67]" in advice
    assert "KTO learns from both kinds" in desirable_weight_advice([good] * 3, cfg)


def test_a_stage_that_trains_on_pairs_names_its_key_when_given_feedback(tmp_path):
    from alignkit.data import read_sets, write_split
    from alignkit.errors import DataError

    (tmp_path / "feedback").mkdir()
    write_split(tmp_path / "feedback" / "train.jsonl", [_feedback("q", "a", True)])
    with pytest.raises(DataError, match=r"^sft\.data: data set 'feedback' holds unpaired feedback .* kto"):
        read_sets(tmp_path, ["feedback"], "train", key="sft.data")
    (item,) = read_sets(tmp_path, ["feedback"], "train", unpaired=True)[0]
    assert item == dataclasses.replace(_feedback("q", "a", True), source="feedback")  # written and read back
