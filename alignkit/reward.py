"""The reward model: a BERT-family encoder with a linear score_head, and its scorer.

Input is a (question, answer) text pair, [CLS] question [SEP] answer [SEP]. When
the pair is longer than max_length, the question loses tokens first (from its
start, keeping the words nearest the answer) so the answer survives; only an
answer that alone exceeds the budget is cut, at its end.
"""

from pathlib import Path

import torch
from torch import nn

WEIGHTS_NAME = "reward_model.pth"


class RewardModel(nn.Module):
    """encoder + score_head: one scalar per (question, answer) pair."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.score_head = nn.Linear(encoder.config.hidden_size, 1)
        # DistilBERT and others have no pooler: then the [CLS] hidden state is the pooled output.
        self.use_pooler = getattr(encoder, "pooler", None) is not None

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        """(B, T) token ids -> (B,) scores."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = out.pooler_output if self.use_pooler else out.last_hidden_state[:, 0]  # (B, H)
        return self.score_head(pooled).squeeze(-1)  # (B,)


def encode_pairs(tokenizer, questions, answers, max_length):
    """Tokenize (question, answer) pairs as BERT text pairs, unpadded.

    Returns a list of dicts (input_ids, token_type_ids where the tokenizer has them,
    attention_mask) for `tokenizer.pad` to pad per batch.
    """
    q_ids = tokenizer(list(questions), add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 2:
        raise ValueError(f"max_length={max_length} leaves no room for a question and an answer")
    features = []
    for q, a in zip(q_ids, a_ids):
        a = a[: budget - 1]  # keep at least one question token
        q = q[len(q) - min(len(q), budget - len(a)):]  # question truncated from its start
        ids = tokenizer.build_inputs_with_special_tokens(q, a)
        feature = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if "token_type_ids" in tokenizer.model_input_names:
            feature["token_type_ids"] = tokenizer.create_token_type_ids_from_sequences(q, a)
        features.append(feature)
    return features


def save_reward_model(model, tokenizer, weights_path, model_dir):
    """State dict of the whole model to weights_path; tokenizer and encoder config to model_dir."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(model_dir)
    model.encoder.config.save_pretrained(model_dir)
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights_path)


def load_reward_model(weights_path, model_dir):
    """Rebuild a saved RewardModel offline: (model in eval mode, tokenizer)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = RewardModel(AutoModel.from_config(config))
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval(), tokenizer


class RewardScorer:
    """Scores plain-text (question, answer) pairs with a saved reward model, in batches.

    It takes text, never another model's token ids, so a GPT-2 policy's answers
    are scored after decoding, re-tokenized by the reward model's own tokenizer.
    """

    def __init__(self, weights_path, model_dir, max_length, batch_size, device="cpu"):
        self.model, self.tokenizer = load_reward_model(weights_path, model_dir)
        self.model.to(device)
        self.device, self.max_length, self.batch_size = device, max_length, batch_size

    @torch.inference_mode()
    def score(self, questions, answers):
        """(N,) float32 scores on the CPU, one per pair."""
        features = encode_pairs(self.tokenizer, questions, answers, self.max_length)
        scores = []
        for start in range(0, len(features), self.batch_size):
            batch = self.tokenizer.pad(features[start: start + self.batch_size], return_tensors="pt")
            scores.append(self.model(**{k: v.to(self.device) for k, v in batch.items()}).float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)
