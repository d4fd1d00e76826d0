"""Model sources: built-in presets, local directories and hub ids, without the network."""

import subprocess
import sys

import pytest
import torch

from alignkit.errors import ModelError
from alignkit.modeldir import load_policy
from alignkit.models import load_encoder, source_kind
from tests.conftest import stage_env

TEXTS = [
    "What is the capital of France?",
    "The capital of France is Paris.",
    "What is 2 plus 2?",
    "2 plus 2 equals 4.",
    "A baby cat is called a kitten.",
    "I would rather not say.",
] * 20


def test_source_kind(tmp_path):
    assert source_kind("tiny-gpt2", "k") == "preset"
    assert source_kind(str(tmp_path), "k") == "local"
    assert source_kind("openai-community/gpt2-medium", "k") == "hub"
    assert source_kind("bert-base-uncased", "k") == "hub"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tiny-gtp2", "models.policy: unknown preset 'tiny-gtp2' (did you mean 'tiny-gpt2'?)"),
        ("tiny-lama", "models.policy: unknown preset 'tiny-lama' (did you mean 'tiny-llama'?)"),
        ("tiny-bret", "models.policy: unknown preset 'tiny-bret' (presets: tiny-gpt2, tiny-llama)"),
        (
            "./no/such/dir",
            "models.policy: './no/such/dir' is not a built-in preset (tiny-gpt2, tiny-llama), an existing directory",
        ),
        ("a/b/c", "models.policy: 'a/b/c' is not a built-in preset"),
    ],
)
def test_bad_model_spec_names_the_key(spec, message):
    with pytest.raises(ModelError) as err:
        load_policy(spec, texts=TEXTS)
    assert str(err.value).startswith(message)


def test_presets_have_the_right_family():
    with pytest.raises(
        ModelError, match="models.policy: preset 'tiny-bert' is of the bert family; .* needs tiny-gpt2 or tiny-llama"
    ):
        load_policy("tiny-bert", texts=TEXTS)
    with pytest.raises(ModelError, match="models.reward: preset 'tiny-gpt2' is of the gpt2 family; .* needs tiny-bert"):
        load_encoder("tiny-gpt2", texts=TEXTS)
    with pytest.raises(ModelError, match=r"^models.reward: unknown preset 'tiny-gtp2' \(presets: tiny-bert\)$"):
        load_encoder("tiny-gtp2", texts=TEXTS)  # close to tiny-gpt2, which is no encoder: not offered


def test_tiny_gpt2_preset_tokenizer_is_byte_level_bpe_trained_on_the_text(no_network):
    model, tok = load_policy("tiny-gpt2", texts=TEXTS, seed=0)
    assert type(tok).__name__ == "GPT2TokenizerFast"
    assert tok.eos_token == "<|endoftext|>" and model.config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok)
    # Words seen often in training are single tokens; byte-level BPE still encodes anything.
    assert tok.tokenize(" capital") == ["Ġcapital"]
    weird = "Zürich ☃ 42"
    assert tok.decode(tok(weird)["input_ids"]) == weird
    logits = model(**tok(["The capital of"], return_tensors="pt")).logits
    assert logits.shape == (1, 3, len(tok))


def test_tiny_llama_preset_is_a_llama_chat_model(tmp_path, no_network):
    model, tok = load_policy("tiny-llama", texts=TEXTS, seed=0)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and type(tok).__name__ == "LlamaTokenizerFast"
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    assert config.hidden_act == "silu" and type(model.model.norm).__name__ == "LlamaRMSNorm"  # SwiGLU, RMSNorm
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>") and tok("a")["input_ids"][0] == tok.bos_token_id
    assert all(len(tok.tokenize(tag)) == 1 for tag in ("<|system|>", "<|user|>", "<|assistant|>"))
    chat = [{"role": "user", "content": "Hi"}]
    assert (
        tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == "<|user|>\nHi</s>\n<|assistant|>\n"
    )
    # The template travels with the tokenizer: a saved model loads back as the same chat model, offline.
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2, tok2 = load_policy(str(tmp_path))
    assert tok2.chat_template == tok.chat_template and type(model2).__name__ == "LlamaForCausalLM"


def test_tiny_bert_preset_encodes_text_pairs(no_network):
    model, tok = load_encoder("tiny-bert", texts=TEXTS, seed=0)
    enc = tok("What is 2 plus 2?", "2 plus 2 equals 4.")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert enc["token_type_ids"][-1] == 1 and enc["token_type_ids"][0] == 0
    assert tok.tokenize("PARIS") == ["paris"]  # lower-cased like bert-base-uncased
    out = model(**tok(["a b"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == model.config.hidden_size


def test_preset_weights_are_seeded():
    a, _ = load_policy("tiny-gpt2", texts=TEXTS, seed=3)
    b, _ = load_policy("tiny-gpt2", texts=TEXTS, seed=3)
    c, _ = load_policy("tiny-gpt2", texts=TEXTS, seed=4)
    wa, wb, wc = (m.transformer.h[0].attn.c_attn.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_local_directories_load_without_the_network(tmp_path, no_network):
    policy, ptok = load_policy("tiny-gpt2", texts=TEXTS, seed=0)
    encoder, etok = load_encoder("tiny-bert", texts=TEXTS, seed=0)
    policy.save_pretrained(tmp_path / "policy")
    ptok.save_pretrained(tmp_path / "policy")
    encoder.save_pretrained(tmp_path / "encoder")
    etok.save_pretrained(tmp_path / "encoder")

    policy2, ptok2 = load_policy(str(tmp_path / "policy"))
    encoder2, etok2 = load_encoder(str(tmp_path / "encoder"))
    assert ptok2.tokenize(" capital") == ptok.tokenize(" capital")
    assert etok2("a", "b")["input_ids"] == etok("a", "b")["input_ids"]
    ids = ptok(["The capital of France"], return_tensors="pt")["input_ids"]
    assert torch.equal(policy.eval()(ids).logits, policy2.eval()(ids).logits)  # eval: no dropout
    assert torch.equal(encoder.embeddings.word_embeddings.weight, encoder2.embeddings.word_embeddings.weight)


def test_local_directory_without_a_model(tmp_path):
    with pytest.raises(ModelError, match=r"models.reward: cannot load '.*' as a local directory"):
        load_encoder(str(tmp_path))


def test_hub_id_goes_to_from_pretrained_and_fails_clearly_offline():
    """With HF_HUB_OFFLINE=1 and an empty cache, a hub id cannot load, and says so in one line."""
    code = "from alignkit.modeldir import load_policy\nload_policy('openai-community/gpt2-medium')\n"
    env = stage_env() | {"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    result = subprocess.run(
        [sys.executable, "-c", f"from alignkit.stage import run_stage\nrun_stage(lambda argv: exec({code!r}))"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert line == (
        "error: models.policy: cannot load 'openai-community/gpt2-medium' as a hub id: it is not in "
        "the Hugging Face cache and HF_HUB_OFFLINE is set"
    )


def test_a_hub_id_fails_at_once_when_the_hub_cannot_be_reached(tmp_path, monkeypatch, no_network):
    """Not cached and no route to the hub: one line at once, not a minute of retries. The cache is
    looked at without the network (no_network fails the test on any connection), and no download is tried."""
    from transformers import AutoTokenizer

    import alignkit.models as models

    calls = []
    real = AutoTokenizer.from_pretrained.__func__

    def recording(cls, spec, **kwargs):
        calls.append(kwargs["local_files_only"])
        return real(cls, spec, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(recording))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(models, "_hub_unreachable", lambda: "huggingface.co cannot be reached (no route)")
    with pytest.raises(ModelError) as err:
        models.load_encoder("bert-base-uncased")
    assert str(err.value) == (
        "models.reward: cannot load 'bert-base-uncased' as a hub id: it is not in the "
        "Hugging Face cache and huggingface.co cannot be reached (no route)"
    )
    assert calls == [True]  # the cache only: the download, with its retries, never started


def test_the_hub_probe_is_one_connection_and_trusts_a_proxy(monkeypatch):
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    import alignkit.models as models

    calls = []

    def unreachable(address, timeout):
        calls.append((address, timeout))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    host = urlparse(constants.ENDPOINT).hostname  # huggingface.co unless HF_ENDPOINT says otherwise
    assert models._hub_unreachable() == f"{host} cannot be reached (Name or service not known)"
    assert len(calls) == 1 and calls[0][0][0] == host and calls[0][1] == 5
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert models._hub_unreachable() is None and len(calls) == 1  # the proxy decides: no direct probe
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert models._hub_unreachable() == "HF_HUB_OFFLINE is set"
