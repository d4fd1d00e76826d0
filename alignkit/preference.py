"""The dpo stage's objective, chosen by dpo.loss_type: pairs (alignkit.dpo: the DPO loss family, SimPO, CPO,
ORPO) or unpaired feedback (alignkit.kto)."""

from alignkit.dpo import train_dpo
from alignkit.kto import train_kto


def train_preferences(policy, load_reference, tokenizer, train, val, cfg, seed, accelerator, live_dir, checkpoint):
    """Train `policy` with cfg.loss_type's objective. train, val: the data sets' items (data.Pair, data.Feedback).
    load_reference() -> a frozen copy of the starting policy, called only if the objective needs a reference
    and the policy has no adapter to switch off. Returns (metrics for metrics/dpo.json, the unwrapped policy)."""
    train_fn = train_kto if cfg.loss_type == "kto" else train_dpo
    return train_fn(policy, load_reference, tokenizer, train, val, cfg, seed, accelerator, live_dir, checkpoint)
