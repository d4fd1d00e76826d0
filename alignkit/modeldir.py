"""The policy model folder: how it is written and read, side by side.

A policy folder (models/sft, models/dpo, models/ppo, models/merged/<name>) is one of:

- a whole model: save_pretrained (safetensors) and the tokenizer, chat template included;
- a LoRA adapter: adapter_config.json, adapter_model.safetensors and the tokenizer. adapter_config.json's
  `base_model_name_or_path` names its base: a hub id, a path (models/sft, itself possibly an adapter), or
  `base`, a folder inside the adapter folder, written when the base exists nowhere else (a preset built in
  memory, registered by ship_base when alignkit.adapters wraps it). load_policy follows that chain and merges
  each adapter in turn, as the book does: the SFT adapter into the base, then the DPO (or PPO) adapter into
  the result;
- either of them with PPO's value head (trl's `v_head`) beside it in value_head.safetensors, so the folder
  still loads as a plain causal LM without unused weights (PPO resumes from its checkpoint, which holds the
  head; nothing else reads it).

trl's value-head wrapper is unwrapped in one place, language_model(). A reward model's folder is written and
read by alignkit.reward (save_reward_model, load_reward_model), beside the model it describes.
"""

import copy
import json
import weakref
from pathlib import Path

from alignkit.models import fused_activations, load_causal_lm

ADAPTER_CONFIG = "adapter_config.json"
BASE_DIR = "base"  # an adapter's base saved inside the adapter folder (a preset has no other home)
VALUE_HEAD = "value_head.safetensors"
PROVENANCE = "alignment.json"  # how the model was tuned: {"stage": "dpo", "objective": "simpo"}
_BASES = weakref.WeakKeyDictionary()  # adapter model -> its base as built in memory, to write beside the adapter


def language_model(model):
    """The causal LM itself: inside trl's value-head wrapper (AutoModelForCausalLMWithValueHead), or `model`."""
    return model.pretrained_model if hasattr(model, "v_head") else model


def is_adapter_dir(path):
    return (Path(path) / ADAPTER_CONFIG).is_file()


def has_adapter(model):
    """True for a peft model, or trl's value-head model around one."""
    from peft import PeftModel

    return isinstance(language_model(model), PeftModel)


def ship_base(adapter_model, base):
    """Write `base` beside `adapter_model`'s adapter when it is saved (a base built in memory, which has no other
    home); base None: a copy of the adapter model's own base, with the LoRA layers taken out, at save time."""
    _BASES[adapter_model] = base


def _base_to_ship(model):
    """The base written beside an adapter (a preset's, built in memory), or None when its name says where it is."""
    if model not in _BASES:
        return None
    return _BASES[model] if _BASES[model] is not None else copy.deepcopy(model).unload()


def _save_adapter(model, tokenizer, tmp):
    """Write a peft model's adapter (and, for a base built in memory, the base under BASE_DIR) into tmp."""
    base = _base_to_ship(model)
    config = model.peft_config["default"]
    if isinstance(config.target_modules, (set, frozenset)):  # all-linear, expanded by peft: a set, in hash order
        config.target_modules = sorted(config.target_modules)  # the same bytes on every run
    if base is not None:
        model.peft_config["default"].base_model_name_or_path = BASE_DIR
        base.save_pretrained(tmp / BASE_DIR, safe_serialization=True)
        tokenizer.save_pretrained(tmp / BASE_DIR)
    # save_embedding_layers=False: the vocabulary is never resized here, and "auto" would look the base's
    # config up on the hub when its name is a path.
    model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)


def provenance(path):
    """The folder's alignment.json ({"stage", "objective"}), or {} where it has none."""
    file = Path(path) / PROVENANCE
    return json.loads(file.read_text()) if file.is_file() else {}


def save_policy(model, tokenizer, out, tuned=None):
    """Write a policy folder `out` atomically: the whole model (safetensors) or its LoRA adapter alone, the
    tokenizer, trl's value head, if the model has one, in value_head.safetensors, and `tuned` (how the model was
    tuned: stage, objective), if given, in alignment.json."""
    from safetensors.torch import save_file

    from alignkit.io import atomic_dir

    lm = language_model(model)
    lm.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out) as tmp:
        if has_adapter(lm):
            _save_adapter(lm, tokenizer, tmp)
        else:
            lm.save_pretrained(tmp, safe_serialization=True)
        if lm is not model:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in model.v_head.state_dict().items()}, tmp / VALUE_HEAD
            )
        tokenizer.save_pretrained(tmp)
        if tuned:
            (tmp / PROVENANCE).write_text(json.dumps(tuned, indent=2) + "\n")


def load_policy(spec, key="models.policy", texts=(), seed=0):
    """(plain causal LM, its tokenizer) from a preset, a hub id or a policy folder. An adapter folder loads as
    its base (followed through further adapter folders) with each adapter merged in turn."""
    if not is_adapter_dir(spec):
        model, tokenizer = load_causal_lm(spec, key, texts, seed)
        return fused_activations(model), tokenizer
    from peft import PeftModel
    from transformers import AutoTokenizer

    path = Path(spec)
    base = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    inside = path / base
    model, _ = load_policy(str(inside) if base and inside.is_dir() else base, key)
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    vars(model).pop("peft_config", None)  # left behind by peft: a later adapter would count it as a second one
    model.name_or_path = str(path)  # merged in place: the base's fused activations stay
    return model, AutoTokenizer.from_pretrained(str(path), local_files_only=True)
