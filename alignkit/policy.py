"""Policy batches and log-probabilities: padding, masks from lengths, summed answer log-probs.

A sequence is prompt ids + answer ids (ending with EOS or the chat template's
end-of-turn), as alignkit.conversation.Renderer encodes it. Masks come from
lengths, never from `input_ids != pad_token_id`: GPT-2 and Llama pad with EOS,
so such a mask would also drop the real EOS that ends every answer.
"""

import torch


def prepare_tokenizer(tokenizer):
    """GPT-2 and Llama tokenizers have no pad token: pad with EOS (masks never rely on it)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True  # trl pads token ids on purpose
    return tokenizer


def max_prompt_tokens(config, max_new_tokens, max_prompt_length):
    """Prompt tokens allowed before generating: at most max_prompt_length, and room left for
    max_new_tokens within the model's context window."""
    return min(max_prompt_length, config.max_position_embeddings - max_new_tokens)


def collate(examples, pad_id):
    """Right-pad [(ids, prompt_len)] into a batch.

    Returns input_ids (B, T), attention_mask (B, T), and loss_mask (B, T): True on
    the answer tokens (EOS included), False on the prompt and the padding.
    """
    longest = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), longest), dtype=torch.bool)
    for i, (ids, prompt_len) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        loss_mask[i, prompt_len: len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def token_logps(logits, input_ids):
    """Log-prob of each next token: (B, T, V) logits, (B, T) ids -> (B, T-1), in float32.

    Position t scores token t+1 given tokens <= t (labels shifted by one).
    Computed as logit - logsumexp so no (B, T, V) log-softmax tensor is kept.
    """
    logits = logits[:, :-1].float()  # float32 even under mixed precision
    labels = input_ids[:, 1:].unsqueeze(-1)
    return (logits.gather(-1, labels).squeeze(-1) - torch.logsumexp(logits, dim=-1))


def sequence_logps(logits, input_ids, loss_mask):
    """Sum of answer-token log-probs per sequence: (B,). Prompt and padding never count."""
    return (token_logps(logits, input_ids) * loss_mask[:, 1:]).sum(-1)


def forward_logps(model, batch):
    """One forward pass -> (B,) summed answer log-probs."""
    # use_cache=False: no key/value cache is wanted when scoring whole sequences.
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return sequence_logps(logits, batch["input_ids"], batch["loss_mask"])


def disable_dropout(model):
    """Dropout off, so the policy and its frozen reference agree exactly at step 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


VALUE_HEAD = "value_head.safetensors"


def save_policy(model, tokenizer, out):
    """save_pretrained of the model (safetensors) and tokenizer, atomically. A LoRA adapter is written alone
    (alignkit.adapters.save_adapter); trl's value head, if the model has one, goes to its own file
    (value_head.safetensors), so the directory loads as a plain causal LM without unused weights."""
    from safetensors.torch import save_file

    from alignkit.adapters import has_adapter, save_adapter
    from alignkit.io import atomic_dir

    language_model = model.pretrained_model if hasattr(model, "v_head") else model
    language_model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out) as tmp:
        if has_adapter(language_model):
            save_adapter(language_model, tokenizer, tmp)
        else:
            language_model.save_pretrained(tmp, safe_serialization=True)
        if hasattr(model, "v_head"):
            save_file({k: v.detach().cpu().contiguous() for k, v in model.v_head.state_dict().items()}, tmp / VALUE_HEAD)
        tokenizer.save_pretrained(tmp)
