"""The reward model: input encoding, pooling, one concatenated forward, training and the scorer."""

import json

import pytest
import torch
from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

from alignkit.conversation import as_text, single_turn
from alignkit.data import Pair, read_split
from alignkit.errors import ParamsError
from alignkit.models import train_bert_tokenizer
from alignkit.reward import PairCollator, PairDataset, RewardModel, RewardScorer, encode_pairs, pair_scores
from alignkit.training import check_precision, cpu_has_native_bf16, make_accelerator
from tests.conftest import stage_main, write_params

WORDS = "what is the capital of france paris a b c d e f g h i j k l m n o p".split()
TOKENIZER = train_bert_tokenizer([" ".join(WORDS)] * 2, 200)


def tiny_bert():
    return BertModel(
        BertConfig(
            vocab_size=len(TOKENIZER),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    )


def test_long_question_is_cut_from_its_start_and_the_answer_survives():
    """max_length 12 leaves 12 - 3 special tokens = 9: the 4 answer tokens all stay,
    and the 12-token question keeps its last 5."""
    question = "a b c d e f g h what is the capital"
    (enc,) = encode_pairs(TOKENIZER, [question], ["paris is the capital"], max_length=12)
    tokens = TOKENIZER.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "h", "what", "is", "the", "capital", "[SEP]", "paris", "is", "the", "capital", "[SEP]"]
    assert enc["token_type_ids"] == [0] * 7 + [1] * 5
    assert enc["attention_mask"] == [1] * 12


def test_answer_longer_than_the_budget_keeps_one_question_token_and_its_own_start():
    """Budget 9 for a 1-token question and a 12-token answer: the answer keeps its first 8."""
    (enc,) = encode_pairs(TOKENIZER, ["what"], ["a b c d e f g h i j k l"], max_length=12)
    tokens = TOKENIZER.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "what", "[SEP]", "a", "b", "c", "d", "e", "f", "g", "h", "[SEP]"]


def test_pooled_output_with_a_pooler_and_cls_state_without_one():
    torch.manual_seed(0)
    bert = RewardModel(tiny_bert()).eval()
    distil = RewardModel(
        DistilBertModel(
            DistilBertConfig(
                vocab_size=len(TOKENIZER), dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64
            )
        )
    ).eval()
    batch = TOKENIZER(["what is the capital"], ["paris"], return_tensors="pt")
    assert bert.use_pooler and not distil.use_pooler
    with torch.no_grad():
        pooled = bert.encoder(**batch).pooler_output
        assert torch.allclose(bert(**batch), bert.score_head(pooled).squeeze(-1))
        cls = distil.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[
            :, 0
        ]
        assert torch.allclose(distil(**batch), distil.score_head(cls).squeeze(-1))  # token_type_ids ignored


def test_one_concatenated_forward_gives_the_scores_of_separate_ones():
    torch.manual_seed(0)
    model = RewardModel(tiny_bert()).eval()
    pairs = [
        Pair(single_turn("what is the capital of france"), "paris", "a b c d e", 1),
        Pair(single_turn("what"), "paris is the capital of france", "f", 2),
    ]
    dataset = PairDataset(TOKENIZER, pairs, max_length=32)
    batch = PairCollator(TOKENIZER)([dataset[0], dataset[1]])
    assert batch["input_ids"].shape[0] == 4  # chosen and rejected of both pairs in one batch
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        chosen, rejected = pair_scores(model, batch)
    assert len(calls) == 1
    with torch.no_grad():
        for i in range(2):
            for part, score in ((dataset[i][0], chosen[i]), (dataset[i][1], rejected[i])):
                alone = model(**TOKENIZER.pad([part], return_tensors="pt"))
                assert torch.allclose(alone[0], score, atol=1e-5)


def test_fp16_on_a_cpu_is_a_params_error():
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid where CUDA is present")
    with pytest.raises(ParamsError, match="reward.precision: fp16 needs a CUDA GPU"):
        make_accelerator("fp16", "reward.precision")


def test_bf16_on_a_cpu_without_native_bf16_warns_and_runs(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("bf16 runs on the GPU where CUDA is present")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN held to AVX2: no bf16 instructions, as on such a CPU
    assert not cpu_has_native_bf16()
    with pytest.warns(UserWarning, match="dpo.precision: bf16 on a CPU without native bf16 .* slower than fp32"):
        check_precision("bf16", "dpo.precision")


def test_reduced_training_is_well_above_chance(reward_model):
    metrics = json.loads((reward_model / "reward.json").read_text())
    assert set(metrics) == {
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_margin",
        "kept_epoch",
        "score_mean",
        "score_std",
    }
    assert metrics["kept_epoch"] == 1  # one epoch, keep: last
    assert metrics["val_accuracy"] >= 0.8
    assert metrics["val_margin"] > 0
    curves = reward_model / "live" / "plots" / "metrics" / "train"
    assert len((curves / "loss.tsv").read_text().splitlines()) > 10


def test_saved_weights_are_a_plain_state_dict(reward_model):
    state = torch.load(reward_model / "models" / "helpful" / "reward_model.pth", weights_only=True)
    assert "score_head.weight" in state and "score_head.bias" in state
    assert any(k.startswith("encoder.embeddings.") for k in state)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_scorer_reloads_the_model_and_reproduces_validation_accuracy(reward_model, prepared_sample):
    val = read_split(prepared_sample / "validation.jsonl")
    helpful = reward_model / "models" / "helpful"
    scorer = RewardScorer(helpful / "reward_model.pth", helpful, batch_size=64)
    prompts = [p.prompt for p in val]
    chosen = scorer.score(prompts, [p.chosen for p in val])
    rejected = scorer.score(prompts, [p.rejected for p in val])
    accuracy = (chosen > rejected).float().mean().item()
    metrics = json.loads((reward_model / "reward.json").read_text())
    assert accuracy == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    assert chosen.shape == (len(val),) and chosen.dtype == torch.float32


def test_stage_trains_from_a_local_distilbert_directory_offline(prepared_sample, tmp_path, no_network):
    """A local BERT-family directory without a pooler (DistilBERT), saved with save_pretrained."""
    train = read_split(prepared_sample / "train.jsonl")
    tokenizer = train_bert_tokenizer([t for p in train for t in (as_text(p.prompt), p.chosen, p.rejected)], 2000)
    encoder = DistilBertModel(
        DistilBertConfig(
            vocab_size=len(tokenizer), dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=128
        )
    )
    local = tmp_path / "my-distilbert"
    encoder.save_pretrained(local)
    tokenizer.save_pretrained(local)

    params = write_params(tmp_path / "params.yaml", models={"reward": str(local)}, reward={"epochs": 1})
    stage_main("reward")(
        [
            "--params",
            str(params),
            "--name",
            "helpful",
            "--data",
            str(prepared_sample),
            "--out",
            str(tmp_path / "rm"),
            "--metrics",
            str(tmp_path / "rm.json"),
            "--live",
            str(tmp_path / "live"),
            "--checkpoints",
            str(tmp_path / "checkpoints"),
        ]
    )
    metrics = json.loads((tmp_path / "rm.json").read_text())
    assert metrics["val_accuracy"] >= 0.8
    scorer = RewardScorer(tmp_path / "rm" / "reward_model.pth", tmp_path / "rm", batch_size=8)
    assert type(scorer.model.encoder).__name__ == "DistilBertModel" and not scorer.model.use_pooler
