"""PPO: exact batches, reward shaping, honest KL settings, cross-tokenizer scoring, and a short run."""

import json
import math

import pytest
import torch

from alignkit.batching import batches
from alignkit.conversation import single_turn
from alignkit.errors import ParamsError
from alignkit.modeldir import load_policy
from alignkit.params import load_params
from alignkit.policy import prepare_tokenizer
from alignkit.ppo import make_trainer, shaped_rewards, value_head_model
from alignkit.reward import RewardScorer, encode_pairs
from tests.conftest import stage_main, write_params


def test_batches_are_always_full():
    """23 items in batches of 8: two full batches; the 7 left over are dropped, never passed short."""
    out = batches(range(23), 8, seed=1)
    assert [len(b) for b in out] == [8, 8]
    assert len(set(sum(out, []))) == 16
    assert out == batches(range(23), 8, seed=1) and out != batches(range(23), 8, seed=2)


def test_shaped_rewards_hand_values():
    """scores 2.0, -1.0, 0.5 minus baselines 0.5 -> 1.5, -1.5, 0.0, clamped to +-1 -> 1, -1, 0."""
    rewards = shaped_rewards(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.5, 0.5, 0.5]), clip=1.0)
    assert rewards.tolist() == [1.0, -1.0, 0.0]


def test_batch_that_trl_cannot_split_is_a_params_error(tmp_path):
    path = write_params(
        tmp_path / "params.yaml", ppo={"batch_size": 16, "mini_batch_size": 8, "gradient_accumulation_steps": 4}
    )
    with pytest.raises(
        ParamsError,
        match=r"ppo.batch_size \(16\) must be a multiple of ppo.mini_batch_size x "
        r"ppo.gradient_accumulation_steps \(8 x 4 = 32\)",
    ):
        load_params(path)


def test_kl_params_reach_the_controller_and_early_stopping(sft_model, tmp_path):
    """kl_target/kl_horizon drive trl's adaptive controller; target_kl only feeds early stopping."""
    cfg = load_params(
        write_params(
            tmp_path / "params.yaml",
            ppo={"kl_target": 3.0, "kl_horizon": 500, "target_kl": 0.05, "early_stopping": True},
        )
    ).ppo
    tokenizer = prepare_tokenizer(load_policy(str(sft_model / "sft"))[1])
    policy = value_head_model(load_policy(str(sft_model / "sft"))[0])
    reference = value_head_model(load_policy(str(sft_model / "sft"))[0], frozen=True)
    trainer = make_trainer(cfg, 0, policy, reference, tokenizer, total_steps=10)
    assert type(trainer.kl_ctl).__name__ == "AdaptiveKLController"
    assert (trainer.kl_ctl.value, trainer.kl_ctl.target, trainer.kl_ctl.horizon) == (cfg.init_kl_coef, 3.0, 500)
    assert trainer.config.early_stopping and trainer.config.target_kl == 0.05
    assert not any(p.requires_grad for p in reference.parameters())
    assert all(not isinstance(m, torch.nn.Dropout) or m.p == 0 for m in policy.modules())
    assert trainer.config.optimize_device_cache is False
    # Gradients are clipped on every optimizer step, not only the first (trl 0.11.4 keeps a one-shot iterator).
    trainable = [p for p in policy.parameters() if p.requires_grad]
    for _ in range(2):
        assert len(list(trainer.model_params)) == len(trainable) > 0


def test_gpt2_answers_are_scored_as_text_retokenized_by_the_bert_tokenizer(sft_model, reward_model):
    policy, gpt2_tokenizer = load_policy(str(sft_model / "sft"))
    helpful = reward_model / "models" / "helpful"
    scorer = RewardScorer(helpful / "reward_model.pth", helpful, batch_size=4)
    assert gpt2_tokenizer.get_vocab() != scorer.tokenizer.get_vocab()
    prompt = gpt2_tokenizer("Question: What is the capital of Italy?\nAnswer:", return_tensors="pt")
    out = policy.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=gpt2_tokenizer.eos_token_id)
    answer = gpt2_tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    seen = []
    scorer.model.encoder.register_forward_hook(
        lambda module, args, kwargs, output: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    score = scorer.score([single_turn("What is the capital of Italy?")], [answer])
    (expected,) = encode_pairs(scorer.tokenizer, ["What is the capital of Italy?"], [answer], scorer.max_length)
    assert seen[0][0].tolist() == expected["input_ids"]  # BERT's own ids for the (question, answer) text pair
    assert seen[0][0].tolist() != out[0].tolist()
    assert score.shape == (1,) and torch.isfinite(score).all()


@pytest.fixture(scope="module")
def ppo_run(sft_model, reward_model, prepared_root, tmp_path_factory):
    """A short PPO run (12 steps) from the shortened SFT policy, recording what each step received."""
    out = tmp_path_factory.mktemp("ppo")
    params = write_params(out / "params.yaml", ppo={"max_steps_per_epoch": 12})
    received = []
    stage_main("ppo")(
        [
            "--params",
            str(params),
            "--data",
            str(prepared_root),
            "--sft",
            str(sft_model / "sft"),
            "--rewards",
            str(reward_model / "models"),
            "--out",
            str(out / "ppo"),
            "--metrics",
            str(out / "ppo.json"),
            "--live",
            str(out / "live"),
            "--checkpoints",
            str(out / "checkpoints"),
        ],
        step_hook=lambda q, r, s: received.append((len(q), len(r), len(s))),
    )
    return out, received


def test_every_step_gets_exactly_batch_size_samples(ppo_run):
    _, received = ppo_run
    assert received == [(16, 16, 16)] * 12


def test_ppo_raises_the_reward_model_score_on_held_out_prompts(ppo_run, prepared_sample):
    out, _ = ppo_run
    metrics = json.loads((out / "ppo.json").read_text())
    assert sum(1 for _ in open(prepared_sample / "validation.jsonl")) >= 128
    assert metrics["val_score_after"] > metrics["val_score_before"]
    assert math.isfinite(metrics["kl"]) and math.isfinite(metrics["kl_coef"])
    assert set(metrics) == {
        "score_per_epoch",
        "val_score_before",
        "val_score_after",
        "kl",
        "kl_coef",
        "entropy",
        "clipfrac",
        "response_length",
        "val_model_scores_before",
        "val_model_scores_after",
        "train_model_scores",
    }
    # one reward model, its raw score: the combined score is its own
    assert metrics["val_model_scores_after"] == {"helpful": pytest.approx(metrics["val_score_after"], abs=1e-6)}
    curves = {p.stem for p in (out / "live" / "plots" / "metrics" / "train").iterdir()}
    assert {"score", "score_helpful", "reward", "kl", "kl_coef", "loss", "lr"} <= curves


def test_saved_policy_is_a_plain_model_with_its_value_head_beside(ppo_run):
    out, _ = ppo_run
    from safetensors.torch import load_file

    saved = load_file(out / "ppo" / "model.safetensors")
    plain, tokenizer = load_policy(str(out / "ppo"))
    assert type(plain).__name__ == "GPT2LMHeadModel" and tokenizer.eos_token == "<|endoftext|>"
    assert torch.equal(saved["transformer.wte.weight"], plain.transformer.wte.weight)
    # The value head has its own file, so the model directory holds no weights a plain causal LM leaves unused.
    assert not any(k.startswith("v_head.") for k in saved)
    assert set(load_file(out / "ppo" / "value_head.safetensors")) == {"summary.weight", "summary.bias"}


def test_the_step_plan_is_worked_out_once_and_refuses_a_batch_larger_than_the_split():
    from types import SimpleNamespace

    from alignkit.errors import ParamsError
    from alignkit.ppo import plan_epochs

    cfg = SimpleNamespace(batch_size=8, epochs=2, max_steps_per_epoch=2)
    plan = plan_epochs(list(range(23)), cfg, seed=1)
    assert [len(epoch) for epoch in plan] == [2, 2] and plan[0] == batches(range(23), 8, 1)[:2]
    assert plan[1] == batches(range(23), 8, 2)[:2]  # each epoch its own seeded order
    with pytest.raises(
        ParamsError,
        match=r"^ppo\.batch_size: 24 is more than the 23 prompts of the training split; "
        r"at most 23$",
    ):
        plan_epochs(list(range(23)), SimpleNamespace(batch_size=24, epochs=1, max_steps_per_epoch=None), seed=1)
