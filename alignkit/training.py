"""How a training stage is set up: accelerate, precision, seeding, device, data order, optimizer and schedule;
and progress bars for long loops. The loops themselves run in alignkit.loop."""

import os
import random
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from alignkit import lifeline
from alignkit.batching import LengthGroupedBatches
from alignkit.errors import ParamsError

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def seed_everything(seed):
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels, so two runs
    with the same params give identical outputs (bit for bit on a CPU)."""
    # cuBLAS needs this to be deterministic; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: an op with no deterministic kernel warns by name instead of stopping the stage.
    torch.use_deterministic_algorithms(True, warn_only=True)


def progress(iterable, desc, main_process=True):
    """Each item of a long loop (validation, reference log-probs, scoring, generation), with a progress bar: on a
    terminal only (disable=None: none in a log file), on the main process only, and gone once the loop ends
    (leave=False), so only the training bars and results stay. Before each item, lifeline.check() stops the
    stage once the dvc process that started it is gone, as the training loops do at every step."""
    with tqdm(iterable, desc=desc, disable=None if main_process else True, leave=False) as bar:
        for item in bar:
            lifeline.check()
            yield item


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which it has no bf16 instructions to use.
NO_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_native_bf16():
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX) that oneDNN may use. Without them, bf16
    autocast on a CPU is emulated: every matmul converts in software, and runs several times slower than fp32."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):  # not Linux: torch's own check
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() in NO_BF16_ISAS
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) and not capped


def check_precision(precision, key):
    """fp16 without CUDA is an error naming `key`; bf16 on a CPU without native bf16 warns (once) that it will
    run slower than fp32, and goes on."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError(f"{key}: fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    if precision == "bf16" and not torch.cuda.is_available() and not cpu_has_native_bf16():
        warnings.warn(
            f"{key}: bf16 on a CPU without native bf16 (no AVX-512 BF16, no AMX) is emulated and runs "
            f"slower than fp32; set {key}: fp32 here",
            stacklevel=3,
        )


def make_accelerator(precision, key, grad_accum_steps=1):
    """An Accelerator for CPU, one GPU, or several under `accelerate launch`; precision: fp32 | bf16 | fp16,
    checked by check_precision."""
    from accelerate import Accelerator

    check_precision(precision, key)
    return Accelerator(mixed_precision=PRECISIONS[precision], gradient_accumulation_steps=grad_accum_steps)


def seeded_loader(dataset, batch_size, seed, collate_fn, shuffle=True, lengths=None):
    """A DataLoader whose order comes from one torch.Generator seeded with `seed` (fit replays an epoch from
    its state). lengths: each example's padded length; given, batches are length-grouped (shuffled) or sorted
    longest first (shuffle=False) by alignkit.batching, else drawn at random (or in order)."""
    from accelerate import PartialState

    generator = torch.Generator().manual_seed(seed)
    if lengths is None:
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn
        )
    batches = LengthGroupedBatches(lengths, batch_size, generator if shuffle else None, PartialState().num_processes)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, generator=generator, collate_fn=collate_fn)


def default_device():
    """Where a stage that has no Accelerator yet will train (trl's PPOTrainer makes its own): this process's
    GPU (LOCAL_RANK under `accelerate launch`) if there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def bitsandbytes(key):
    """bitsandbytes, imported; ParamsError naming `key` where it cannot load."""
    try:
        import bitsandbytes as bnb
    except Exception as err:  # an import that fails for any reason: say which key needs it, in one line
        raise ParamsError(
            f"{key}: needs bitsandbytes, which cannot load here "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0][:160]})"
        ) from None
    return bnb


def choose_optimizer(parameters, cfg, key):
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


def make_optimizer(model, cfg, total_steps, key="train"):
    """cfg.optimizer (choose_optimizer) over the trainable parameters, and the learning-rate
    schedule cfg.lr_scheduler (linear, cosine or constant_with_warmup, as transformers.get_scheduler names them)
    with warmup over cfg.warmup_ratio of total_steps. cfg: lr, weight_decay, optimizer, warmup_ratio, lr_scheduler."""
    from transformers import get_scheduler

    optimizer = choose_optimizer((p for p in model.parameters() if p.requires_grad), cfg, f"{key}.optimizer")
    return optimizer, get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
