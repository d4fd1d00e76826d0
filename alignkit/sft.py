"""Supervised fine-tuning of the policy on preferred answers (loss on answer tokens only)."""

import math

import torch

from alignkit.conversation import FITTED, Renderer
from alignkit.loop import fit
from alignkit.losses import answer_nll
from alignkit.policy import answer_token_logps, collate
from alignkit.training import progress, seeded_loader


def _collator(tokenizer):
    return lambda examples: collate(examples, tokenizer.pad_token_id)


def _step(model, batch):
    nll, _ = answer_nll(answer_token_logps(model, batch), batch["loss_mask"])
    return nll, {}


def make_evaluate(accelerator):
    @torch.no_grad()
    def evaluate(model, loader):
        """Answer-token NLL (per token, over the whole split) and its perplexity."""
        model.eval()
        total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
        for batch in progress(loader, "sft: validation", accelerator.is_main_process):
            with accelerator.autocast():
                nll, n = answer_nll(answer_token_logps(model, batch), batch["loss_mask"])
            total += nll * n
            count += n
        total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
        loss = (total / count).item()
        return {"loss": loss, "perplexity": math.exp(loss)}

    return evaluate


def train_sft(model, tokenizer, train_pairs, val_pairs, cfg, seed, accelerator, live_dir, checkpoint=None):
    """Causal-LM fine-tuning on prompt + chosen answer (rendered by the tokenizer's chat template, if it has
    one). cfg: the `sft` params section.

    Returns (metrics for metrics/sft.json, the unwrapped model). With cfg.epochs == 0
    the model is returned unchanged and only evaluated.
    """
    renderer = Renderer(tokenizer)

    def examples(pairs):
        return renderer.encode_all(
            [p.prompt for p in pairs], [p.chosen for p in pairs], cfg.max_length, cfg.max_prompt_length
        )

    (train, fitted), (val, val_fitted) = examples(train_pairs), examples(val_pairs)
    train_loader = seeded_loader(
        train,
        cfg.batch_size,
        seed,
        _collator(tokenizer),
        lengths=[len(ids) for ids, _ in train] if cfg.group_by_length else None,
    )
    val_loader = seeded_loader(
        val, cfg.eval_batch_size, seed, _collator(tokenizer), shuffle=False, lengths=[len(ids) for ids, _ in val]
    )
    before, after, model = fit(
        model,
        train_loader,
        val_loader,
        cfg,
        accelerator,
        live_dir,
        desc="sft",
        step=_step,
        evaluate=make_evaluate(accelerator),
        checkpoint=checkpoint,
    )
    metrics = {
        "val_loss": after["loss"],
        "val_perplexity": after["perplexity"],
        "val_loss_before": before["loss"],
        "kept_epoch": after["kept_epoch"],
        # Train and validation examples fitted into max_length / max_prompt_length (conversation.FITTED).
        "fitted": {k: fitted[k] + val_fitted[k] for k in FITTED},
    }
    if "train_loss" in after:
        metrics["train_loss"] = after["train_loss"]
    return metrics, model
