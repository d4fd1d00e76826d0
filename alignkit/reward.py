"""The reward model: a BERT-family encoder with a linear score_head, its training, and its scorer.

Input is a (question, answer) text pair, [CLS] question [SEP] answer [SEP], where
the question is the prompt conversation as readable text (conversation.as_text:
one user turn is the question itself; longer ones read as HH dialogues). When
the pair is longer than max_length, the question loses tokens first (from its
start, keeping the words nearest the answer) so the answer survives; only an
answer that alone exceeds the budget is cut, at its end.
"""

import inspect
import json
import types
from pathlib import Path

import torch
from torch import nn

from alignkit.batching import in_order, sorted_batches
from alignkit.conversation import as_text
from alignkit.errors import ModelError, refused_pickle
from alignkit.loop import fit
from alignkit.losses import bradley_terry_loss
from alignkit.training import progress, seeded_loader

SETTINGS_NAME = "alignkit_reward.json"  # beside the tokenizer: how inputs were encoded, and the score statistics
WEIGHTS_NAME = "reward_model.pth"  # a reward model's state dict, in its directory


class RewardModel(nn.Module):
    """encoder + score_head: one scalar per (question, answer) pair."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.score_head = nn.Linear(encoder.config.hidden_size, 1)
        # DistilBERT and others have no pooler: then the [CLS] hidden state is the pooled output.
        self.use_pooler = getattr(encoder, "pooler", None) is not None
        self.takes_token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters
        self.cls_only = cls_only_last_layer(encoder)  # the last layer on [CLS] alone, where it can

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        """(B, T) token ids -> (B,) scores."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None and self.takes_token_types else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = out.pooler_output if self.use_pooler else out.last_hidden_state[:, 0]  # (B, H)
        return self.score_head(pooled).squeeze(-1)  # (B,)


def cls_only_last_layer(encoder):
    """Let the encoder's last layer compute the [CLS] position alone, where it is a BERT-style layer.

    The score reads only [CLS] from the last layer, so the other positions need there only their keys and values:
    the [CLS] query attends to every position (the layer's own self-attention modules, called with the layer's
    input as the attended states), then only [CLS] goes through the attention output and the feed-forward block.
    The last layer's output is then (B, 1, H), [CLS] alone. Scores and gradients equal those of the full layer
    (tests/test_batching.py); the forward is replaced on the layer object only, so weights and state-dict keys
    are untouched. Encoders of other shapes (DistilBERT) keep their full forward. Returns whether it applied.
    """
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    last = layers[-1] if layers else None
    parts = ("attention", "intermediate", "output")
    if (
        last is None
        or not all(hasattr(last, p) for p in parts)
        or not hasattr(last.attention, "self")
        or getattr(last, "is_decoder", False)
        or getattr(encoder.config, "position_embedding_type", "absolute") != "absolute"
    ):
        return False
    last.forward = types.MethodType(_cls_only_forward, last)
    return True


def _cls_only_forward(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """A BERT layer's forward for the [CLS] query alone: (B, T, H) -> ((B, 1, H),)."""
    query = hidden_states[:, :1]  # (B, 1, H)
    mask = attention_mask[:, :, :1] if attention_mask is not None else None  # (B, 1, 1, T): the [CLS] row
    attended = layer.attention.self(query, encoder_hidden_states=hidden_states, encoder_attention_mask=mask)[0]
    attention = layer.attention.output(attended, query)  # dense, dropout, LayerNorm(+ residual [CLS])
    return (layer.output(layer.intermediate(attention), attention),)  # the feed-forward block on [CLS]


def encode_pairs(tokenizer, questions, answers, max_length):
    """Tokenize (question, answer) pairs as BERT text pairs, unpadded.

    Returns a list of dicts (input_ids, token_type_ids where the tokenizer has them,
    attention_mask) for `tokenizer.pad` to pad per batch.
    """
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 2:
        raise ValueError(f"max_length={max_length} leaves no room for a question and an answer")
    # Each text is cut to what can be kept (budget - 1 tokens: one is left for the other side) as it is tokenized,
    # the answer at its end and the question at its start, so no sequence longer than the encoder takes is made.
    a_ids = tokenizer(list(answers), add_special_tokens=False, truncation=True, max_length=budget - 1)["input_ids"]
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        q_ids = tokenizer(list(questions), add_special_tokens=False, truncation=True, max_length=budget - 1)[
            "input_ids"
        ]
    finally:
        tokenizer.truncation_side = side
    features = []
    for q, a in zip(q_ids, a_ids):
        q = q[len(q) - min(len(q), budget - len(a)) :]  # the question fills what the answer leaves, from its end
        ids = tokenizer.build_inputs_with_special_tokens(q, a)
        feature = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if "token_type_ids" in tokenizer.model_input_names:
            feature["token_type_ids"] = tokenizer.create_token_type_ids_from_sequences(q, a)
        features.append(feature)
    return features


def save_reward_model(model, tokenizer, max_length, weights_path, model_dir, stats):
    """State dict of the whole model to weights_path; tokenizer, encoder config, the encoding settings and
    the score statistics (stats: {score_mean, score_std}, for whitening) to model_dir, so the model can be
    rebuilt offline."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(model_dir)
    model.encoder.config.save_pretrained(model_dir)
    (model_dir / SETTINGS_NAME).write_text(json.dumps({"max_length": max_length, **stats}) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with open(weights_path, "wb") as f:  # a file object: the archive's inner name does not vary with the path
        torch.save(state, f)


def load_reward_model(weights_path, model_dir):
    """Rebuild a saved RewardModel offline: (model in eval mode, tokenizer, settings: max_length, score_mean,
    score_std).

    The weights are read with torch.load(weights_only=True): a file that would run
    code when unpickled is refused. Keys and shapes are checked against the model
    that model_dir describes; any mismatch is a one-line ModelError naming them.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        settings = json.loads((Path(model_dir) / SETTINGS_NAME).read_text())
    except (OSError, ValueError) as err:
        raise ModelError(
            f"{model_dir}: not a saved reward model directory ({str(err).strip().splitlines()[0]})"
        ) from None
    model = RewardModel(AutoModel.from_config(config))
    model.load_state_dict(read_state_dict(weights_path, model.state_dict(), f"the reward model in {model_dir}"))
    return model.eval(), tokenizer, settings


def read_state_dict(path, expected, what):
    """torch.load(path, weights_only=True), checked against `expected` (a state dict) key by key.

    ModelError (one line) for an unreadable file, a pickle that is not plain tensors,
    or missing / unexpected keys and wrong shapes (the first few of each named)."""
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ModelError(f"{path}: cannot read it as a torch state dict (not a file written by torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelError(f"{path}: refused to load: {refused_pickle(err)}") from None
    except (OSError, RuntimeError, EOFError) as err:
        raise ModelError(f"{path}: cannot read it as a torch state dict ({str(err).strip().splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")

    def names(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    problems = []
    if missing := set(expected) - set(state):
        problems.append(f"missing keys {names(missing)}")
    if unexpected := set(state) - set(expected):
        problems.append(f"unexpected keys {names(unexpected)}")
    wrong = [
        f"{k} is {tuple(state[k].shape)}, expected {tuple(v.shape)}"
        for k, v in sorted(expected.items())
        if k in state and state[k].shape != v.shape
    ]
    if wrong:
        problems.append(
            "wrong shapes: " + "; ".join(wrong[:3]) + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else "")
        )
    if problems:
        raise ModelError(f"{path} does not match {what}: " + "; ".join(problems))
    return state


class RewardScorer:
    """Scores plain-text (question, answer) pairs with a saved reward model, in batches.

    It takes text, never another model's token ids, so a GPT-2 policy's answers
    are scored after decoding, re-tokenized by the reward model's own tokenizer.
    """

    def __init__(self, weights_path, model_dir, batch_size, device="cpu"):
        self.model, self.tokenizer, settings = load_reward_model(weights_path, model_dir)
        self.max_length = settings["max_length"]
        # Mean and std of its scores on its training answers: what whitening subtracts and divides by.
        self.mean, self.std = settings["score_mean"], settings["score_std"]
        self.tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True  # pre-tokenized on purpose
        self.model.to(device)
        self.device, self.batch_size = device, batch_size

    @torch.inference_mode()
    def score(self, prompts, answers, desc=None):
        """(N,) float32 scores on the CPU, one per (prompt Messages, answer text); desc: a progress bar's label
        (None: no bar, as for PPO's per-step batches)."""
        features = encode_pairs(self.tokenizer, [as_text(m) for m in prompts], answers, self.max_length)
        batches = sorted_batches([len(f["input_ids"]) for f in features], self.batch_size)  # little padding
        scores = []
        for index in batches if desc is None else progress(batches, desc):
            batch = self.tokenizer.pad([features[i] for i in index], return_tensors="pt")
            scores.append(self.model(**{k: v.to(self.device) for k, v in batch.items()}).float().cpu())
        return in_order(batches, scores) if scores else torch.zeros(0)


# ---------------------------------------------------------------- training


class PairDataset(torch.utils.data.Dataset):
    """Encoded (question, chosen) and (question, rejected) inputs, one item per pair."""

    def __init__(self, tokenizer, pairs, max_length):
        prompts = [as_text(p.prompt) for p in pairs]
        self.chosen = encode_pairs(tokenizer, prompts, [p.chosen for p in pairs], max_length)
        self.rejected = encode_pairs(tokenizer, prompts, [p.rejected for p in pairs], max_length)

    def __len__(self):
        return len(self.chosen)

    def __getitem__(self, i):
        return self.chosen[i], self.rejected[i]

    def lengths(self):
        """Each pair's padded length in a batch: the longer of its two inputs."""
        return [max(len(c["input_ids"]), len(r["input_ids"])) for c, r in zip(self.chosen, self.rejected)]


class PairCollator:
    """N pairs -> one batch of 2N inputs, chosen first, padded to the longest of the 2N."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # Inputs are tokenized once up front and padded per batch here, on purpose.
        tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True

    def __call__(self, items):
        chosen, rejected = zip(*items)
        return self.tokenizer.pad([*chosen, *rejected], return_tensors="pt")


def pair_scores(model, batch):
    """One concatenated forward pass over 2N inputs -> (chosen_rewards (N,), rejected_rewards (N,))."""
    scores = model(**batch).float()  # (2N,)
    n = scores.shape[0] // 2
    return scores[:n], scores[n:]


def batch_loss(model, batch):
    """The training step's loss: Bradley-Terry over one concatenated forward of chosen and rejected."""
    chosen_rewards, rejected_rewards = pair_scores(model, batch)
    loss, accuracy, _ = bradley_terry_loss(chosen_rewards, rejected_rewards)
    return loss, {"accuracy": accuracy}


def make_evaluate(accelerator):
    @torch.no_grad()
    def evaluate(model, loader):
        """Mean loss, pairwise accuracy and mean margin over a loader of pairs (all processes)."""
        model.eval()
        chosen, rejected = [], []
        for batch in progress(loader, "reward: validation", accelerator.is_main_process):
            with accelerator.autocast():
                c, r = pair_scores(model, batch)
            c, r = accelerator.gather_for_metrics((c, r))
            chosen.append(c)
            rejected.append(r)
        loss, accuracy, margin = bradley_terry_loss(torch.cat(chosen), torch.cat(rejected))
        return {"loss": loss.item(), "accuracy": accuracy.item(), "margin": margin.item()}

    return evaluate


def train_reward_model(model, tokenizer, train_pairs, val_pairs, cfg, seed, accelerator, live_dir, checkpoint=None):
    """Fine-tune encoder and score_head with the Bradley-Terry loss.

    cfg: the `reward` params section; checkpoint: a Checkpointer or None.
    Returns (metrics for metrics/reward.json, the unwrapped model).
    """
    train, val = PairDataset(tokenizer, train_pairs, cfg.max_length), PairDataset(tokenizer, val_pairs, cfg.max_length)
    collate = PairCollator(tokenizer)
    train_loader = seeded_loader(
        train, cfg.batch_size, seed, collate, lengths=train.lengths() if cfg.group_by_length else None
    )
    val_loader = seeded_loader(val, cfg.eval_batch_size, seed, collate, shuffle=False, lengths=val.lengths())
    _, after, model = fit(
        model,
        train_loader,
        val_loader,
        cfg,
        accelerator,
        live_dir,
        desc="reward",
        step=batch_loss,
        evaluate=make_evaluate(accelerator),
        checkpoint=checkpoint,
    )
    stats_loader = seeded_loader(train, cfg.eval_batch_size, seed, collate, shuffle=False, lengths=train.lengths())
    stats = score_statistics(model, accelerator.prepare(stats_loader), accelerator)
    return {
        "train_loss": after["train_loss"],
        "val_loss": after["loss"],
        "val_accuracy": after["accuracy"],
        "val_margin": after["margin"],
        "kept_epoch": after["kept_epoch"],
        **stats,
    }, model


@torch.no_grad()
def score_statistics(model, loader, accelerator):
    """{score_mean, score_std}: the mean and (population) std of the model's scores on every answer, chosen and
    rejected, of a loader of pairs -- the statistics with which ppo.reward.whiten standardises its scores."""
    model.eval()
    scores = []
    for batch in progress(loader, "reward: score statistics", accelerator.is_main_process):
        with accelerator.autocast():
            scores.append(accelerator.gather_for_metrics(model(**batch).float()))
    scores = torch.cat(scores)
    return {"score_mean": scores.mean().item(), "score_std": scores.std(correction=0).item()}
