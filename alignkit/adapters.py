"""Adapters, in one place: a LoRA adapter (peft) on a policy, a 4-bit base (bitsandbytes), loading and merging.

A stage's params section says what its policy trains (`<stage>.lora`, `<stage>.quantization`); `prepare`
turns a loaded model into that, and the rest of the code does not ask which it got: the optimizer sees the
trainable parameters, the checkpoint keeps them (alignkit.checkpoint.model_weights), `save_policy` writes
the adapter, and `frozen_reference` gives DPO its reference without a second copy when there is an adapter.

A model directory is either a plain model (save_pretrained) or an adapter directory (adapter_config.json,
adapter_model.safetensors, the tokenizer). An adapter names its base in adapter_config.json's
`base_model_name_or_path`: a hub id, a path (models/sft, itself possibly an adapter), or `base`, a folder
inside the adapter directory, written when the base exists nowhere else (a preset built in memory).
`load_merged` follows that chain and merges each adapter in turn, as the book does: the SFT adapter into
the base, then the DPO (or PPO) adapter into the result.
"""

import copy
import json
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from alignkit.errors import ParamsError

ADAPTER_CONFIG = "adapter_config.json"
BASE_DIR = "base"  # an adapter's base saved inside the adapter directory (a preset has no other home)
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_BASES = weakref.WeakKeyDictionary()  # adapter model -> its base as built in memory, to write beside the adapter


def is_adapter_dir(path):
    return (Path(path) / ADAPTER_CONFIG).is_file()


def has_adapter(model):
    """True for a peft model, or trl's value-head model around one."""
    from peft import PeftModel

    return isinstance(getattr(model, "pretrained_model", model), PeftModel)


def lora_config(lora, model=None):
    """peft's LoraConfig for a `<stage>.lora` params section (a causal-LM task). For GPT-2, whose layers are
    Conv1D (weights stored as (in, out)), fan_in_fan_out is set, as peft would after warning."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    conv1d = model is not None and any(isinstance(m, Conv1D) for m in model.modules())
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=lora.bias,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM", fan_in_fan_out=conv1d)


def bitsandbytes(key):
    """bitsandbytes, imported; ParamsError naming `key` where it cannot load."""
    try:
        import bitsandbytes as bnb
    except Exception as err:  # an import that fails for any reason: say which key needs it, in one line
        raise ParamsError(f"{key}: needs bitsandbytes, which cannot load here "
                          f"({type(err).__name__}: {str(err).strip().splitlines()[0][:160]})") from None
    return bnb


def quantize_nf4(model, compute_dtype, device, key):
    """Every linear layer but the output layer in 4-bit NormalFloat with double quantisation, as
    BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True) loads it.

    bitsandbytes' own Linear4bit and Params4bit; the weights are quantised as they move to `device` (CUDA or
    the CPU). transformers 4.45 refuses quantization_config on a CPU, so the layers are swapped here, on a
    model already loaded. The model is then marked `is_loaded_in_4bit`, as from_pretrained marks it, so peft
    wraps these layers with its bitsandbytes LoRA layer (which merges by dequantising) and trl treats it alike.
    """
    from transformers.pytorch_utils import Conv1D

    bnb = bitsandbytes(key)
    output = model.get_output_embeddings()
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not output]
    for name, module in targets:
        conv = isinstance(module, Conv1D)  # GPT-2's Conv1D holds its weight as (in, out)
        weight = module.weight.detach().float()
        weight = weight.t() if conv else weight
        out_features, in_features = weight.shape
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=module.bias is not None, compute_dtype=compute_dtype,
                                  compress_statistics=True, quant_type="nf4", device="meta")
        # bitsandbytes repacks a layer's weights for its AVX-512 BF16 CPU kernel at the first inference-mode
        # forward, only on such CPUs and only for widths that are multiples of 64 (tiny-llama's MLP is not):
        # one kernel on every CPU kind, as on AVX2-only machines, keeps results the same across them.
        layer.support_avx512bf16_for_cpu = False
        layer.weight = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False, compress_statistics=True,
                                         quant_type="nf4").to(device)
        if module.bias is not None:
            layer.bias = torch.nn.Parameter(module.bias.detach().to(device), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    model.to(device)
    model.is_loaded_in_4bit = True
    return model


def prepare(model, cfg, key, device):
    """The policy a stage trains: `model` itself (no adapter), or `model` frozen under a LoRA adapter, on a
    4-bit base with cfg.quantization nf4. cfg: the stage's params section (lora, quantization, precision)."""
    if not cfg.lora.enabled:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    # A base built in memory (a preset) has no other home: it is written beside the adapter. Quantising loses
    # its full-precision weights, so only then is a copy kept now; otherwise save_adapter takes it off the adapter.
    keep_base = not model.name_or_path and cfg.quantization != "none"
    base = copy.deepcopy(model) if keep_base else None
    if cfg.quantization == "nf4":
        model = quantize_nf4(model, COMPUTE_DTYPES[cfg.precision], device, f"{key}.quantization")
        # Frozen base, layer norms and embeddings in fp32 (peft's recipe for a k-bit base); checkpointing stays
        # the stage's choice.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        model = get_peft_model(model, lora_config(cfg.lora, model))
    except ValueError as err:  # e.g. a target module the model does not have
        raise ParamsError(f"{key}.lora.target_modules: {str(err).strip().splitlines()[0][:200]}") from None
    if not model.get_base_model().name_or_path:
        _BASES[model] = base
    return model


def base_to_ship(model):
    """The base written beside an adapter (a preset's, built in memory), or None when its name says where it is."""
    model = getattr(model, "pretrained_model", model)
    if model not in _BASES:
        return None
    # A copy made before quantising, or the adapter model's own base: a copy with the LoRA layers taken out.
    return _BASES[model] if _BASES[model] is not None else copy.deepcopy(model).unload()


def save_adapter(model, tokenizer, tmp):
    """Write a peft model's adapter (and, for a base built in memory, the base under BASE_DIR) into tmp."""
    base = base_to_ship(model)
    config = model.peft_config["default"]
    if isinstance(config.target_modules, (set, frozenset)):  # all-linear, expanded by peft: a set, in hash order
        config.target_modules = sorted(config.target_modules)  # the same bytes on every run
    if base is not None:
        model.peft_config["default"].base_model_name_or_path = BASE_DIR
        base.save_pretrained(tmp / BASE_DIR, safe_serialization=True)
        tokenizer.save_pretrained(tmp / BASE_DIR)
    # save_embedding_layers=False: the vocabulary is never resized here, and "auto" would look the base's
    # config up on the hub when its name is a path.
    model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)


def load_merged(path, key, load_plain):
    """(plain causal LM, tokenizer) from an adapter directory: its base (followed through further adapter
    directories) with each adapter merged in turn. load_plain(spec, key) loads a base that is no adapter."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    path = Path(path)
    base = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    inside = path / base
    spec = str(inside) if base and inside.is_dir() else base
    model, _ = (load_merged(spec, key, load_plain) if is_adapter_dir(spec) else load_plain(spec, key))
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    vars(model).pop("peft_config", None)  # left behind by peft: a later adapter would count it as a second one
    model.name_or_path = str(path)
    return model, AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@contextmanager
def frozen_reference(policy, load_copy, device):
    """The frozen reference of a preference stage, on `device`: with an adapter, the policy itself with the
    adapter switched off (no second model); otherwise a frozen copy from load_copy(), sent back to the CPU
    after use."""
    if has_adapter(policy):
        policy.to(device)
        was_training = policy.training
        with policy.disable_adapter():
            yield policy.eval()
        policy.train(was_training)
        return
    from alignkit.policy import disable_dropout

    reference = disable_dropout(load_copy().requires_grad_(False).eval()).to(device)
    yield reference
    reference.cpu()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def separate_reference(policy, load_copy):
    """PPO's reference for trl's PPOTrainer: None when the policy has an adapter (trl then switches it off to
    score the reference), else a frozen copy from load_copy()."""
    return None if has_adapter(policy) else load_copy()


def default_device():
    """Where a stage that has no Accelerator yet will train (trl's PPOTrainer makes its own): this process's
    GPU (LOCAL_RANK under `accelerate launch`) if there is one, else the CPU."""
    import os

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def make_optimizer(parameters, cfg, key):
    """cfg.optimizer over `parameters`: adamw (torch's fused AdamW), paged_adamw_32bit or adamw_8bit
    (bitsandbytes). cfg: lr, weight_decay, optimizer. A bitsandbytes optimizer that cannot load is a
    ParamsError naming `key`."""
    parameters = list(parameters)
    if cfg.optimizer == "adamw":
        # fused: one pass over each parameter's memory per step instead of about ten (the for-loop
        # default on CPU); at GPT-2-Medium size that is seconds per step on a CPU.
        return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    bnb = bitsandbytes(key)
    kind = {"paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "adamw_8bit": bnb.optim.AdamW8bit}[cfg.optimizer]
    return kind(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
