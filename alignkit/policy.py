"""Policy batches and log-probabilities: padding, masks from lengths, summed answer log-probs.

A sequence is prompt ids + answer ids (ending with EOS or the chat template's
end-of-turn), as alignkit.conversation.Renderer encodes it. Masks come from
lengths, never from `input_ids != pad_token_id`: GPT-2 and Llama pad with EOS,
so such a mask would also drop the real EOS that ends every answer.
"""

import torch

from alignkit.errors import ParamsError


def prepare_tokenizer(tokenizer):
    """GPT-2 and Llama tokenizers have no pad token: pad with EOS (masks never rely on it)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True  # trl pads token ids on purpose
    return tokenizer


def max_prompt_tokens(config, max_new_tokens, max_prompt_length, key="max_new_tokens"):
    """Prompt tokens allowed before generating: at most max_prompt_length, and room left for
    max_new_tokens within the model's context window. ParamsError naming `key` (the params key that set
    max_new_tokens) when no prompt token would fit."""
    context = config.max_position_embeddings
    if max_new_tokens >= context:
        raise ParamsError(
            f"{key}: {max_new_tokens} new tokens leave no room for a prompt in the model's context of "
            f"{context} tokens; at most {context - 1}"
        )
    return min(max_prompt_length, context - max_new_tokens)


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
        loss_mask[i, prompt_len : len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def label_logps(logits, labels):
    """log softmax(logits)[label] per row: (..., V) logits, (...) ids -> (...), in float32 even under mixed
    precision. One fused log_softmax and a gather: on a CPU 2-3x faster, forward and backward, than
    logit - logsumexp(logits), which passes over the vocabulary more often."""
    return logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def token_logps(logits, input_ids):
    """Log-prob of each next token: (B, T, V) logits, (B, T) ids -> (B, T-1), in float32.

    Position t scores token t+1 given tokens <= t (labels shifted by one).
    """
    return label_logps(logits[:, :-1], input_ids[:, 1:])


def sequence_logps(logits, input_ids, loss_mask):
    """Sum of answer-token log-probs per sequence: (B,). Prompt and padding never count."""
    return (token_logps(logits, input_ids) * loss_mask[:, 1:]).sum(-1)


def answer_token_logps(model, batch, temperature=1.0):
    """One forward pass -> (B, T-1) next-token log-probs, 0 wherever the next token is not an answer token.
    temperature: the log-probs of logits / temperature, the distribution answers were sampled from (online RL).

    The output layer (model.get_output_embeddings(), the LM head) runs only at the positions that predict an
    answer token: a forward pre-hook hands it those hidden states alone, (n, H), so no logits or vocabulary-wide
    softmax are computed for prompt and padding positions, forward or backward. The model is still called
    whole, so accelerate's wrappers (DDP, FSDP, autocast) and peft's adapters see an ordinary forward.
    The values are those of token_logps on the full logits (tests/test_batching.py checks values and gradients).
    """
    from accelerate.utils import extract_model_from_parallel

    predicts = batch["loss_mask"][:, 1:]  # (B, T-1): position t predicts token t+1
    rows, cols = predicts.nonzero(as_tuple=True)
    head = extract_model_from_parallel(model).get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda module, args: (args[0][rows, cols], *args[1:]))
    try:
        # use_cache=False: no key/value cache is wanted when scoring whole sequences.
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    finally:
        hook.remove()
    out = torch.zeros(predicts.shape, dtype=torch.float32, device=logits.device)
    if temperature != 1.0:
        logits = logits / temperature
    out[rows, cols] = label_logps(logits, batch["input_ids"][:, 1:][rows, cols])  # (n, V) logits -> (n,)
    return out


def forward_logps(model, batch):
    """One forward pass -> (B,) summed answer log-probs (the LM head on answer positions only)."""
    return answer_token_logps(model, batch).sum(-1)


def disable_dropout(model):
    """Dropout off, so the policy and its frozen reference agree exactly at step 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model
