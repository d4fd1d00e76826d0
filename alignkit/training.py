"""Pieces every training stage shares: accelerate setup, seeding, dvclive, batching."""

import math
import os
import random
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

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
    """A progress bar over a long loop: on a terminal only (disable=None: none in a log file), on the main
    process only, and gone once the loop ends (leave=False), so only the training bars and results stay."""
    return tqdm(iterable, desc=desc, disable=None if main_process else True, leave=False)


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
        warnings.warn(f"{key}: bf16 on a CPU without native bf16 (no AVX-512 BF16, no AMX) is emulated and runs "
                      f"slower than fp32; set {key}: fp32 here", stacklevel=3)


def make_accelerator(precision, key, grad_accum_steps=1):
    """An Accelerator for CPU, one GPU, or several under `accelerate launch`; precision: fp32 | bf16 | fp16,
    checked by check_precision."""
    from accelerate import Accelerator

    check_precision(precision, key)
    return Accelerator(mixed_precision=PRECISIONS[precision], gradient_accumulation_steps=grad_accum_steps)


class NullLive:
    """Stands in for dvclive.Live on processes other than the main one."""

    def log_metric(self, *args, **kwargs):
        pass

    def next_step(self):
        pass

    def end(self):
        pass


def open_live(live_dir, accelerator, resume=False):
    """dvclive logger writing step curves under live_dir (main process only).

    It neither edits dvc.yaml nor creates DVC experiments: the pipeline declares
    the plots, and `dvc exp run` makes the experiments. resume=True continues
    the curves already in live_dir (after a checkpoint restored them).
    """
    if not accelerator.is_main_process:
        return NullLive()
    from dvclive import Live

    return Live(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)


def seeded_loader(dataset, batch_size, seed, collate_fn, shuffle=True, lengths=None):
    """A DataLoader whose order comes from one torch.Generator seeded with `seed` (fit replays an epoch from
    its state). lengths: each example's padded length; given, batches are length-grouped (shuffled) or sorted
    longest first (shuffle=False) by alignkit.batching, else drawn at random (or in order)."""
    from accelerate import PartialState

    generator = torch.Generator().manual_seed(seed)
    if lengths is None:
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                           collate_fn=collate_fn)
    batches = LengthGroupedBatches(lengths, batch_size, generator if shuffle else None, PartialState().num_processes)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, generator=generator, collate_fn=collate_fn)


def make_optimizer(model, cfg, total_steps, key="train"):
    """cfg.optimizer (alignkit.adapters.make_optimizer) over the trainable parameters, and the learning-rate
    schedule cfg.lr_scheduler (linear, cosine or constant_with_warmup, as transformers.get_scheduler names them)
    with warmup over cfg.warmup_ratio of total_steps. cfg: lr, weight_decay, optimizer, warmup_ratio, lr_scheduler."""
    from transformers import get_scheduler

    from alignkit.adapters import make_optimizer as optimizer_for

    optimizer = optimizer_for((p for p in model.parameters() if p.requires_grad), cfg, f"{key}.optimizer")
    return optimizer, get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                                    num_training_steps=total_steps)


def train_step(model, batch, step, optimizer, scheduler, accelerator, max_grad_norm):
    """One micro-batch: forward under autocast and backward; at an accumulation boundary
    also clip, step the optimizer and scheduler, and zero the gradients.

    step(model, batch) -> (loss, {name: tensor}). Returns step's result, nothing synced to the host.
    """
    with accelerator.accumulate(model):
        with accelerator.autocast():
            loss, logs = step(model, batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return loss, logs


def log_validation(live, metrics):
    """One point per validation pass on each val/<name> curve, at the optimizer step it follows."""
    for name, value in metrics.items():
        live.log_metric(f"val/{name}", value)


def fit(model, train_loader, val_loader, cfg, accelerator, live_dir, *, desc, step, evaluate, grad_accum_steps=1,
        checkpoint=None):
    """The training loop the stages share: AdamW, a warmup-then-decay schedule, clipping, accumulation.

    cfg: a params section with lr, weight_decay, warmup_ratio, lr_scheduler, max_grad_norm, epochs,
    max_steps (optimizer steps; when set it overrides epochs, and the last epoch may stop part-way) and
    keep (last: the weights at the end; best: those of the epoch with the lowest validation loss).
    step(model, batch) -> (loss, {name: float}) for one micro-batch, under autocast.
    evaluate(model, val_loader) -> {name: float}, computed on every process.
    checkpoint: a Checkpointer, or None. With one, the loop resumes from its saved
    state when there is one, and saves every `checkpoint.every` optimizer steps.
    Curves go to dvclive once per optimizer step; `evaluate` runs before training
    and after each epoch. A non-finite loss stops training with a TrainingError
    naming the step. Returns (metrics before training, after the kept epoch plus "kept_epoch" and
    "train_loss", the mean over the last epoch; the unwrapped model).
    """
    from alignkit import lifeline
    from alignkit.checkpoint import TrainingError, load_weights, model_weights, rng_state, set_rng_state

    # Counted as one process would: accelerate steps a prepared scheduler once per process.
    total = (cfg.max_steps * accelerator.num_processes if cfg.max_steps
             else cfg.epochs * math.ceil(len(train_loader) / grad_accum_steps))
    optimizer, scheduler = make_optimizer(model, cfg, total, desc)
    generator = train_loader.generator  # the data order: its state at an epoch's start replays that epoch
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)

    saved = checkpoint.load(accelerator.unwrap_model(model)) if checkpoint else None
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        checkpoint.restore_live(live_dir)
        position, before, best = saved["position"], saved["before"], saved["best"]
        accelerator.step = position["accumulation_step"]
        print(f"{desc}: resumed from checkpoint at step {position['global_step']}", flush=True)
    else:
        position = {"epoch": 0, "batches_done": 0, "global_step": 0, "epoch_losses": [], "accumulation_step": 0}
        before = evaluate(model, val_loader)
        best = None  # with cfg.keep == "best": the epoch with the lowest validation loss, its metrics and weights
    live = open_live(live_dir, accelerator, resume=bool(saved))
    if not saved:  # the validation curves start from the untrained model, at step 0
        log_validation(live, before)
    after = before
    per_epoch = math.ceil(len(train_loader) / grad_accum_steps)  # per process, after sharding
    steps = cfg.max_steps or cfg.epochs * per_epoch  # max_steps, when set, overrides epochs
    epochs = math.ceil(steps / per_epoch)
    global_step = position["global_step"]
    # disable=None: a bar on a terminal, none in logs; only the main process draws it.
    bar = tqdm(total=steps, initial=global_step, desc=desc, disable=None if accelerator.is_main_process else True)
    epoch_losses = position["epoch_losses"]
    for epoch in range(position["epoch"], epochs):
        resuming = saved is not None and epoch == position["epoch"]
        if resuming:
            generator.set_state(saved["epoch_generator"])
        epoch_generator = generator.get_state()
        if resuming:
            set_rng_state(saved["rng"])  # after the data order is set up, as when it was saved
        else:
            epoch_losses = []
        skip = position["batches_done"] if resuming else 0
        model.train()
        pending = []
        for batches_done, batch in enumerate(train_loader, start=1):
            if batches_done <= skip:
                continue  # consumed before the checkpoint
            if global_step == steps:
                break  # resumed from the checkpoint of the last step, part-way through an epoch
            lifeline.check()  # the process that started the stage is gone: stop here, the checkpoint stays
            loss, logs = train_step(model, batch, step, optimizer, scheduler, accelerator, cfg.max_grad_norm)
            pending.append({"loss": loss.detach(), **logs})
            if not accelerator.sync_gradients:
                continue
            means = {k: torch.stack([torch.as_tensor(p[k], dtype=torch.float32) for p in pending]).mean()
                     for k in pending[0]}
            means = {k: v.item() for k, v in accelerator.reduce(means, "mean").items()}
            pending = []
            global_step += 1
            if not math.isfinite(means["loss"]):
                last = checkpoint.describe() if checkpoint else "checkpoints are off"
                raise TrainingError(f"{desc}: the loss is {means['loss']} at step {global_step} (epoch {epoch}); "
                                    f"training stopped, the last good checkpoint is kept ({last})")
            epoch_losses.append(means["loss"])
            for name, value in means.items():
                live.log_metric(f"train/{name}", value)
            live.log_metric("train/lr", scheduler.get_last_lr()[0])
            live.next_step()
            bar.update()
            bar.set_postfix(epoch=epoch, **{k: f"{v:.3f}" for k, v in means.items()})
            if checkpoint and checkpoint.due(global_step):
                checkpoint.save(global_step, accelerator.unwrap_model(model), {
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "epoch_generator": epoch_generator, "before": before, "best": best,
                    "position": {"epoch": epoch, "batches_done": batches_done, "global_step": global_step,
                                 "epoch_losses": list(epoch_losses), "accumulation_step": accelerator.step},
                }, live_dir)
            if global_step == steps:
                break  # max_steps reached part-way through an epoch
        after = evaluate(model, val_loader)
        log_validation(live, after)
        bar.write(f"epoch {epoch}: " + ", ".join(f"val {k} {v:.4f}" for k, v in after.items()))
        if cfg.keep == "best" and (best is None or after["loss"] < best["metrics"]["loss"]):
            best = {"epoch": epoch, "metrics": after, "weights": model_weights(accelerator.unwrap_model(model))}
    bar.close()
    live.end()
    if checkpoint:
        checkpoint.finished(global_step)  # the stage marks it complete once its outputs are written
    model = accelerator.unwrap_model(model)
    if best is not None:  # keep the best epoch's weights, and report its validation metrics
        load_weights(model, best["weights"])
        after = {**best["metrics"], "kept_epoch": best["epoch"] + 1}
        bar.write(f"{desc}: kept the weights of epoch {best['epoch']} (lowest val loss {after['loss']:.4f})")
    else:
        after = {**after, "kept_epoch": epochs}  # the last epoch's weights (counted from 1; 0: none trained)
    if epoch_losses:
        after = {**after, "train_loss": sum(epoch_losses) / len(epoch_losses)}
    return before, after, model
