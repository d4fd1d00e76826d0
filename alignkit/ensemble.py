"""Several reward models, one reward: how the named models' scores are combined (ppo.reward).

Each reward model scores the decoded text with its own tokenizer (RewardScorer).
Its raw score is the Bradley-Terry logit, so sigmoid(score) is the "sigmoid
scale" on which Llama 2 set its safety threshold, and the raw score is already
Llama 2's logit(sigmoid(.)), the "reversed sigmoid". Whitening standardises it
with that model's own mean and std over its training answers, saved by the
reward stage, so scores of models trained apart are on one scale and the result
does not depend on which answers share a batch.

- weighted_sum: R = sum_m w_m * s_m
- llama2:       R = s_safety  if the prompt is marked unsafe or sigmoid(raw safety score) < threshold
                    s_helpful otherwise
where s_m is model m's score, whitened when ppo.reward.whiten is true.
"""

from pathlib import Path

import torch

from alignkit.reward import WEIGHTS_NAME, RewardScorer


def whiten(scores, mean, std):
    """(scores - mean) / std, elementwise."""
    return (scores - mean) / std


def weighted_sum(scores, weights):
    """sum over names of weights[name] * scores[name]; scores: {name: (N,) tensor}."""
    return sum(weights[name] * scores[name] for name in weights)


def llama2_rule(helpful, safety, safety_raw, unsafe, threshold):
    """Llama 2's choice per sample: the safety score where the prompt is unsafe or sigmoid(safety_raw) <
    threshold, the helpfulness score elsewhere. helpful, safety: the (possibly whitened) scores that are
    returned; safety_raw: the raw safety scores the threshold is tested on; unsafe: (N,) booleans."""
    use_safety = unsafe | (torch.sigmoid(safety_raw) < threshold)
    return torch.where(use_safety, safety, helpful)


def violations(safety_raw, unsafe, threshold):
    """Share of the answers to unsafe prompts whose sigmoid(safety score) is below threshold (None: no unsafe
    prompts), and how many unsafe prompts there were."""
    n = int(unsafe.sum())
    bad = (torch.sigmoid(safety_raw[unsafe]) < threshold).sum().item() if n else 0
    return (bad / n if n else None), n


def combine(raw, stats, unsafe, cfg):
    """The combined reward (N,) from each model's raw scores raw: {name: (N,)}; stats: {name: (mean, std)};
    unsafe: (N,) booleans; cfg: the ppo.reward params."""
    scores = {name: whiten(s, *stats[name]) if cfg.whiten else s for name, s in raw.items()}
    if cfg.combine == "weighted_sum":
        return weighted_sum(scores, cfg.weights)
    return llama2_rule(scores[cfg.helpfulness], scores[cfg.safety], raw[cfg.safety], unsafe, cfg.safety_threshold)


class RewardModels:
    """The named reward models under root (root/<name>/reward_model.pth and its tokenizer), scored together.

    score() gives the combined reward as ppo.reward defines it and each model's raw scores, all from text."""

    def __init__(self, root, names, cfg, batch_size, device="cpu"):
        self.cfg = cfg
        self.scorers = {
            name: RewardScorer(Path(root) / name / WEIGHTS_NAME, Path(root) / name, batch_size, device)
            for name in names
        }

    @property
    def names(self):
        return list(self.scorers)

    def score(self, prompts, answers, unsafe, desc=None):
        """(combined (N,), {name: raw scores (N,)}) for (prompt Messages, answer text) pairs; unsafe: N booleans;
        desc: a progress bar's label (None: no bar)."""
        raw = {
            name: scorer.score(prompts, answers, desc and f"{desc} ({name})") for name, scorer in self.scorers.items()
        }
        stats = {name: (s.mean, s.std) for name, s in self.scorers.items()}
        return combine(raw, stats, torch.tensor(list(unsafe), dtype=torch.bool), self.cfg), raw

    def violations(self, raw, unsafe):
        """Per unsafe prompt (in order), 1.0 where the answer's sigmoid(safety score) is below
        ppo.reward.safety_threshold, else 0.0: the items of the violation rate. None when ppo.reward.safety is
        null or no prompt is unsafe."""
        if self.cfg.safety is None or not any(unsafe):
            return None
        below = torch.sigmoid(raw[self.cfg.safety]) < self.cfg.safety_threshold
        return [float(b) for b, u in zip(below.tolist(), unsafe) if u]
