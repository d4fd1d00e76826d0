"""Models and tokenizers from a hub id, a local directory, or a built-in preset.

`models.policy` and `models.reward` in params.yaml name one of:

1. a built-in preset (PRESETS below): the tokenizer is trained on the given
   texts with the `tokenizers` library (byte-level BPE for GPT-2 and Llama,
   WordPiece for BERT) and the weights are initialised from a small config; the
   Llama preset carries TinyLlama-Chat's chat template. Fully offline.
2. a local directory written by `save_pretrained`: loaded with
   local_files_only=True, so the network is never touched.
3. a Hugging Face hub id such as `openai-community/gpt2-medium`: loaded with
   `from_pretrained`, which uses the network or the local HF cache.

The policy's tokenizer always comes from the policy's own source, and the
reward encoder's from the reward's: a GPT-2 policy never gets a BERT tokenizer.
"""

import difflib
import re
from collections import Counter
from pathlib import Path

from alignkit.errors import ModelError

GPT2_SPECIAL = "<|endoftext|>"
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LLAMA_SPECIAL = ["<unk>", "<s>", "</s>"]
# TinyLlama-1.1B-Chat-v1.0's chat template, as in its tokenizer_config.json: the tags are plain text
# (single tokens in the preset's vocabulary) and every turn ends with EOS.
LLAMA_CHAT_TAGS = ["<|system|>", "<|user|>", "<|assistant|>"]
TINYLLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

# Built-in presets. Each is a small architecture named like a checkpoint; its
# tokenizer is trained on the data, so `vocab_size` is an upper bound.
PRESETS = {
    "tiny-gpt2": {"family": "gpt2", "vocab_size": 4096, "n_positions": 256, "n_embd": 128, "n_layer": 2, "n_head": 4},
    # Llama architecture as in TinyLlama-1.1B: grouped-query attention (4 heads share 2 key/value heads),
    # SwiGLU MLP (intermediate 2.75 x hidden), RMSNorm, rotary positions, q/k/v/o/gate/up/down_proj.
    "tiny-llama": {
        "family": "llama",
        "vocab_size": 4096,
        "max_position_embeddings": 256,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    },
    "tiny-bert": {
        "family": "bert",
        "vocab_size": 4096,
        "max_position_embeddings": 256,
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 512,
    },
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def source_kind(spec, key, family=None):
    """Classify a model spec as 'preset', 'local' or 'hub'; ModelError if it is none of them.

    Hints offer only the presets of the families in `family` (causal LMs for a policy, BERT for a reward
    encoder) when given."""
    if spec in PRESETS:
        return "preset"
    if Path(spec).is_dir():
        return "local"
    offered = [name for name, p in PRESETS.items() if family is None or p["family"] in family]
    close = difflib.get_close_matches(spec, offered, n=1, cutoff=0.8)
    if close or spec.startswith("tiny-"):
        hint = f"did you mean '{close[0]}'?" if close else f"presets: {', '.join(offered)}"
        raise ModelError(f"{key}: unknown preset '{spec}' ({hint})")
    if spec.startswith((".", "/", "~")) or Path(spec).exists() or not _HUB_ID.match(spec):
        raise ModelError(
            f"{key}: '{spec}' is not a built-in preset ({', '.join(offered)}), "
            "an existing directory, or a hub id like 'org/name'"
        )
    return "hub"


def train_gpt2_tokenizer(texts, vocab_size):
    """A GPT-2 style byte-level BPE tokenizer trained on `texts`; EOS doubles as BOS and UNK."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[GPT2_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=GPT2_SPECIAL, eos_token=GPT2_SPECIAL, unk_token=GPT2_SPECIAL
    )


def train_llama_tokenizer(texts, vocab_size):
    """A Llama style tokenizer (byte-level BPE here) trained on `texts`, with <s>/</s>/<unk>, the
    TinyLlama-Chat tags as single tokens, BOS added to text as Llama's does, and TinyLlama's chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=LLAMA_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(tag, normalized=False) for tag in LLAMA_CHAT_TAGS])
    return LlamaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        chat_template=TINYLLAMA_CHAT_TEMPLATE,
    )


def train_bert_tokenizer(texts, vocab_size):
    """A BERT style lower-cased WordPiece tokenizer whose vocabulary is learnt from `texts`.

    The vocabulary is the special tokens, every character seen (alone and as a
    ##continuation, so any word of those characters can be spelt out), then the
    words seen at least twice, most frequent first, up to vocab_size. Ties are
    broken alphabetically, so the same text always gives the same tokenizer; the
    library's WordPieceTrainer breaks ties in hash order, which differs between
    runs and would make every rerun's model differ.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    chars = sorted({ch for word in counts for ch in word})
    words = sorted((w for w, n in counts.items() if n >= 2 and len(w) > 1), key=lambda w: (-counts[w], w))
    vocab = BERT_SPECIAL + chars + ["##" + ch for ch in chars]
    vocab += words[: max(0, vocab_size - len(vocab))]

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )


def build_preset(name, texts, seed):
    """(model, tokenizer) for a preset: tokenizer trained on `texts`, weights seeded from `seed`."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    spec = dict(PRESETS[name])
    family = spec.pop("family")
    texts = list(texts)
    if not texts:
        raise ModelError(f"preset '{name}' needs training text for its tokenizer, and none was given")
    torch.manual_seed(seed)
    if family == "gpt2":
        tokenizer = train_gpt2_tokenizer(texts, spec.pop("vocab_size"))
        config = GPT2Config(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **spec
        )
        return GPT2LMHeadModel(config), tokenizer
    if family == "llama":
        tokenizer = train_llama_tokenizer(texts, spec.pop("vocab_size"))
        config = LlamaConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **spec
        )
        return LlamaForCausalLM(config), tokenizer
    tokenizer = train_bert_tokenizer(texts, spec.pop("vocab_size"))
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **spec)
    return BertModel(config), tokenizer


def _load(spec, key, texts, seed, family, auto_class):
    """(model, tokenizer) from a preset of `family`, or a local directory or hub id via `auto_class`."""
    import transformers
    from transformers import AutoTokenizer

    kind = source_kind(spec, key, family)
    if kind == "preset":
        if PRESETS[spec]["family"] not in family:
            wanted = [name for name, p in PRESETS.items() if p["family"] in family]
            raise ModelError(
                f"{key}: preset '{spec}' is of the {PRESETS[spec]['family']} family; "
                f"this model needs {' or '.join(wanted)}"
            )
        return build_preset(spec, texts, seed)
    local = kind == "local"

    def load(local_files_only):
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=local_files_only)
        return getattr(transformers, auto_class).from_pretrained(spec, local_files_only=local_files_only), tokenizer

    try:
        return load(local_files_only=True)  # a local directory, or a hub id in the HF cache: no network
    except (OSError, ValueError) as err:
        if local:
            raise ModelError(f"{key}: cannot load '{spec}' as a local directory: {_first_line(err)}") from None
    # Not cached: download. Without a route to the hub the libraries retry for about a minute, so ask first.
    unreachable = _hub_unreachable()
    if unreachable:
        raise ModelError(
            f"{key}: cannot load '{spec}' as a hub id: it is not in the Hugging Face cache and {unreachable}"
        )
    try:
        return load(local_files_only=False)
    except (OSError, ValueError) as err:
        raise ModelError(f"{key}: cannot load '{spec}' as a hub id: {_first_line(err)}") from None


def _first_line(err):
    return str(err).strip().splitlines()[0]


def _hub_unreachable():
    """Why the Hugging Face hub cannot be reached now (one quick connection, no retries), or None.

    Behind a proxy the direct connection says nothing, so the libraries are left to try."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        return f"{host} cannot be reached ({getattr(err, 'strerror', None) or err})"
    return None


def load_causal_lm(spec, key="models.policy", texts=(), seed=0):
    """(causal LM, its tokenizer) from a preset, local directory or hub id. A policy folder that holds a LoRA
    adapter is read by alignkit.modeldir.load_policy, which calls this for the base."""
    return _load(spec, key, texts, seed, ("gpt2", "llama"), "AutoModelForCausalLM")


def fused_activations(model):
    """GPT-2's gelu_new (NewGELUActivation: tanh-approximate GELU written as five elementwise ops, each a pass
    over the activations, forward and backward) replaced by torch's fused kernel of the same formula
    (PytorchGELUTanh, F.gelu(approximate="tanh"); they agree within 3e-7), about 2.8x faster on a CPU. Only the
    module objects change: the config, the weights and what save_pretrained writes stay the same."""
    from transformers.activations import NewGELUActivation, PytorchGELUTanh

    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, PytorchGELUTanh())
    return model


def load_encoder(spec, key="models.reward", texts=(), seed=0):
    """(encoder without a head, its tokenizer) from a preset, local directory or hub id."""
    return _load(spec, key, texts, seed, ("bert",), "AutoModel")
