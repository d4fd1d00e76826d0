"""Adapters, in one place: a LoRA adapter (peft) on a policy, on a 4-bit base (bitsandbytes), and the frozen
reference that goes with it.

A stage's params section says what its policy trains (`<stage>.lora`, `<stage>.quantization`); `prepare`
turns a loaded model into that, and the rest of the code does not ask which it got: the optimizer sees the
trainable parameters, the checkpoint keeps them (alignkit.checkpoint.model_weights), alignkit.modeldir writes
the adapter and reads the chain back merged, and `frozen_reference` gives DPO its reference without a second
copy when there is an adapter.
"""

import copy
from contextlib import contextmanager, nullcontext

import torch

from alignkit.errors import ParamsError
from alignkit.modeldir import has_adapter, ship_base
from alignkit.policy import disable_dropout
from alignkit.training import bitsandbytes

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def lora_config(lora, model=None):
    """peft's LoraConfig for a `<stage>.lora` params section (a causal-LM task). For GPT-2, whose layers are
    Conv1D (weights stored as (in, out)), fan_in_fan_out is set, as peft would after warning."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    conv1d = model is not None and any(isinstance(m, Conv1D) for m in model.modules())
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
        fan_in_fan_out=conv1d,
    )


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
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not output
    ]
    for name, module in targets:
        conv = isinstance(module, Conv1D)  # GPT-2's Conv1D holds its weight as (in, out)
        weight = module.weight.detach().float()
        weight = weight.t() if conv else weight
        out_features, in_features = weight.shape
        layer = bnb.nn.Linear4bit(
            in_features,
            out_features,
            bias=module.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        # bitsandbytes repacks a layer's weights for its AVX-512 BF16 CPU kernel at the first inference-mode
        # forward, only on such CPUs and only for widths that are multiples of 64 (tiny-llama's MLP is not):
        # one kernel on every CPU kind, as on AVX2-only machines, keeps results the same across them.
        layer.support_avx512bf16_for_cpu = False
        layer.weight = bnb.nn.Params4bit(
            weight.contiguous(), requires_grad=False, compress_statistics=True, quant_type="nf4"
        ).to(device)
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
    # its full-precision weights, so only then is a copy kept now; otherwise saving takes it off the adapter.
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
        ship_base(model, base)
    return model


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
    reference = disable_dropout(load_copy().requires_grad_(False).eval()).to(device)
    yield reference
    reference.cpu()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def separate_reference(policy, load_copy):
    """PPO's reference for trl's PPOTrainer: None when the policy has an adapter (trl then switches it off to
    score the reference), else a frozen copy from load_copy()."""
    return None if has_adapter(policy) else load_copy()


def live_reference(policy, load_copy, device):
    """A reference that online RL runs at every step: a function giving a context manager that yields it -- the
    policy with its adapter off (no second model), or one frozen copy from load_copy() kept on `device`."""
    if has_adapter(policy):
        return lambda: frozen_reference(policy, None, device)
    reference = disable_dropout(load_copy().requires_grad_(False).eval()).to(device)
    return lambda: nullcontext(reference)
