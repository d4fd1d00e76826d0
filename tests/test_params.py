"""Typed params: the shipped files validate; malformed ones fail with one line naming the key."""

import pytest
import yaml

from alignkit.errors import ParamsError
from alignkit.params import load_params
from tests.conftest import REPO, repo_params


def write(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def with_change(section, key, value):
    params = repo_params()
    if section is None:
        params[key] = value
    else:
        params[section][key] = value
    return params


def test_shipped_params_and_reference_profile_validate():
    default = load_params(REPO / "params.yaml")
    reference = load_params(REPO / "profiles" / "reference.yaml")
    assert default.models.policy == "tiny-gpt2" and default.models.reward == "tiny-bert"
    assert reference.models.policy == "openai-community/gpt2-medium"
    assert reference.models.reward == "bert-base-uncased"


def test_reference_profile_has_the_same_keys_as_params():
    def keys(d, prefix=""):
        return {k2 for k, v in d.items() for k2 in (keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k])}

    reference = yaml.safe_load((REPO / "profiles" / "reference.yaml").read_text())
    assert keys(reference) == keys(repo_params())


@pytest.mark.parametrize("section, key, value, message", [
    ("prepare", "val_fraction", "abc", "prepare.val_fraction: expected a float in [0, 1), got 'abc'"),
    ("prepare", "val_fraction", 1.5, "prepare.val_fraction: expected a float in [0, 1), got 1.5"),
    ("prepare", "max_chars", -3, "prepare.max_chars: expected a positive integer, got -3"),
    ("prepare", "max_chars", 12.5, "prepare.max_chars: expected a positive integer, got 12.5"),
    ("prepare", "on_too_long", "skip", "prepare.on_too_long: expected one of 'error', 'drop', got 'skip'"),
    ("data", "schema", "csv", "data.schema: expected one of 'auto', 'reference', 'prompt_chosen_rejected', 'hh'"),
    ("models", "policy", 7, "models.policy: expected a string, got 7"),
    (None, "seed", "forty-two", "seed: expected a non-negative integer, got 'forty-two'"),
    (None, "seed", True, "seed: expected a non-negative integer, got True"),
    ("prepare", "val_fracton", 0.1, "prepare.val_fracton: unknown key (did you mean 'val_fraction'?)"),
    (None, "dpo_v2", {"lr": 1e-5}, "dpo_v2: unknown key"),
])
def test_bad_value_names_the_key(tmp_path, section, key, value, message):
    path = write(tmp_path, with_change(section, key, value))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert "\n" not in str(err.value)


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
