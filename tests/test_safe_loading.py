"""Safe loading: no file is unpickled into code, mismatching weights fail by name, no remote code."""

import json
import os
import re

import pytest
import torch
from transformers import BertConfig, BertModel

from alignkit.errors import ModelError
from alignkit.models import train_bert_tokenizer
from alignkit.reward import RewardModel, load_reward_model, save_reward_model
from tests.conftest import REPO

TEXTS = ["what is the capital of france", "paris is the capital", "the sky is blue", "water is wet"] * 3


@pytest.fixture
def saved(tmp_path):
    """A tiny saved reward model: (weights path, model dir, its state dict)."""
    tokenizer = train_bert_tokenizer(TEXTS, 200)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = RewardModel(BertModel(config))
    weights, model_dir = tmp_path / "reward_model.pth", tmp_path / "reward"
    save_reward_model(model, tokenizer, 32, weights, model_dir, {"score_mean": 0.5, "score_std": 2.0})
    return weights, model_dir, model.state_dict()


class RunsCode:
    """Unpickling this runs a shell command (what a malicious .pth would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused(saved, tmp_path):
    weights, model_dir, state = saved
    marker = tmp_path / "pwned"
    torch.save({**state, "score_head.bias": RunsCode(marker)}, weights)
    with pytest.raises(ModelError) as err:
        load_reward_model(weights, model_dir)
    assert str(err.value).startswith(f"{weights}: refused to load: ")
    assert "would call posix.system" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()  # the command never ran


def test_the_saved_model_loads(saved):
    weights, model_dir, state = saved
    model, _, settings = load_reward_model(weights, model_dir)
    assert settings == {"max_length": 32, "score_mean": 0.5, "score_std": 2.0}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("score_head.bias"), "missing keys score_head.bias"),
        (lambda s: s.update({"value_head.weight": torch.zeros(1)}), "unexpected keys value_head.weight"),
        (
            lambda s: s.update({"score_head.weight": torch.zeros(1, 8)}),
            "wrong shapes: score_head.weight is (1, 8), expected (1, 16)",
        ),
    ],
)
def test_mismatching_weights_fail_with_one_line_naming_them(saved, change, message):
    weights, model_dir, state = saved
    state = dict(state)
    change(state)
    torch.save(state, weights)
    with pytest.raises(ModelError) as err:
        load_reward_model(weights, model_dir)
    assert str(err.value).startswith(f"{weights} does not match the reward model in {model_dir}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_not_a_state_dict_and_not_a_model_dir(saved, tmp_path):
    weights, model_dir, _ = saved
    weights.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read it as a torch state dict"):
        load_reward_model(weights, model_dir)
    with pytest.raises(ModelError, match="not a saved reward model directory"):
        load_reward_model(weights, tmp_path / "nowhere")


def code_files():
    for folder in ("alignkit", "stages", "bench"):
        yield from sorted((REPO / folder).rglob("*.py"))


def test_every_torch_load_is_weights_only_and_no_remote_code():
    loads = 0
    for path in code_files():
        text = path.read_text()
        for call in re.findall(r"torch\.load\((.*?)\)\n", text, flags=re.S):
            loads += 1
            assert "weights_only=True" in call, f"{path}: torch.load without weights_only=True"
        assert not re.search(r"trust_remote_code\s*=\s*True", text), f"{path} enables trust_remote_code"
    assert loads >= 2  # the reward model and the checkpoint state


def test_pipeline_policies_are_safetensors(small_repo):
    repo, _ = small_repo
    for name in ("sft", "dpo", "ppo"):
        files = {p.name for p in (repo / "models" / name).iterdir()}
        assert "model.safetensors" in files, (name, files)
        assert not files & {"pytorch_model.bin", "training_args.bin"}, (name, files)


def test_a_checkpoint_whose_state_would_run_code_is_refused_with_our_advice_not_torchs(tmp_path):
    """A state.pt holding a pickled object (its checksums made to match, as whoever swapped it could) is refused
    in one line that ends with what to do -- delete the checkpoint -- and never passes on torch's hint to retry
    with weights_only=False."""
    import hashlib
    import types

    from alignkit.checkpoint import INFO, STATE, Checkpointer, sealed
    from alignkit.errors import TrainingError

    accelerator = types.SimpleNamespace(wait_for_everyone=lambda: None, is_main_process=True)
    model = torch.nn.Linear(2, 1)
    checkpointer = Checkpointer(tmp_path / "ckpt", 1, "same run", accelerator)
    checkpointer.save(1, model, {"optimizer": {}}, tmp_path / "no live")
    with open(tmp_path / "ckpt" / STATE, "wb") as f:
        torch.save({"optimizer": types.SimpleNamespace(a=1)}, f)
    info = json.loads((tmp_path / "ckpt" / INFO).read_text())
    info["files"][STATE] = hashlib.sha256((tmp_path / "ckpt" / STATE).read_bytes()).hexdigest()
    (tmp_path / "ckpt" / INFO).write_text(json.dumps(sealed({k: v for k, v in info.items() if k != "sha256"})))
    with pytest.raises(TrainingError) as err:
        Checkpointer(tmp_path / "ckpt", 1, "same run", accelerator).load(model)
    assert str(err.value) == (
        f"{tmp_path / 'ckpt' / STATE}: refused to load: it holds more than tensors and plain "
        f"containers, and unpickling it would call types.SimpleNamespace; not resumed: "
        f"delete {tmp_path / 'ckpt'} to start afresh"
    )
