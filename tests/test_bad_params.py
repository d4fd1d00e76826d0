"""Malformed params, each run through the stage that reads them: exit code 2 and one line on
stderr naming params.yaml and the key, and no output written."""

import pytest

from tests.conftest import repo_params, run_here, write_params

TWO_MODELS = {"helpful": {"data": "helpful", "encoder": None}, "safety": {"data": "helpful", "encoder": None}}
LLAMA2 = {
    "combine": "llama2",
    "weights": {"helpful": 1.0, "safety": 1.0},
    "helpfulness": "helpful",
    "safety": "safety",
    "safety_threshold": 0.15,
    "whiten": True,
}

CASES = {  # id: (section changes, stage, the start of the error after "error: "; params.yaml: is added)
    "unknown key": ({"reward": {"learning_rate": 1e-3}}, "reward", "reward.learning_rate: unknown key"),
    "wrong type": ({"dpo": {"lr": "fast"}}, "dpo", "dpo.lr: expected a positive float, got 'fast'"),
    "negative batch size": (
        {"reward": {"batch_size": -4}},
        "reward",
        "reward.batch_size: expected a positive integer, got -4",
    ),
    "mini-batch larger than batch": (
        {"ppo": {"mini_batch_size": 32}},
        "ppo",
        "ppo.mini_batch_size (32) is larger than ppo.batch_size (16)",
    ),
    "batch not a multiple": (
        {"ppo": {"gradient_accumulation_steps": 3}},
        "ppo",
        "ppo.batch_size (16) must be a multiple of ppo.mini_batch_size x ppo.gradient_accumulation_steps",
    ),
    "negative checkpoint interval": (
        {"sft": {"checkpoint_every": -1}},
        "sft",
        "sft.checkpoint_every: expected a non-negative integer, got -1",
    ),
    "unknown precision": (
        {"reward": {"precision": "fp8"}},
        "reward",
        "reward.precision: expected one of 'fp32', 'bf16', 'fp16', got 'fp8'",
    ),
    "fp16 without a GPU": ({"dpo": {"precision": "fp16"}}, "dpo", "!dpo.precision: fp16 needs a CUDA GPU"),
    "top_p above 1": ({"ppo": {"top_p": 1.5}}, "ppo", "ppo.top_p: "),
    # Verifiable rules: declared in `rules`, weighed by name, a pattern only where the kind reads one.
    "a weight for an undeclared rule": (
        {"online": {"reward": {"reward_models": 1.0, "rules": {"numbr": 1.0}}}},
        "online",
        "online.reward.rules: unknown rule 'numbr' (did you mean 'number'?)",
    ),
    "an unknown rule kind": (
        {"rules": {"number": {"kind": "python", "pattern": None}}},
        "online",
        "rules.number.kind: expected one of 'number', 'exact', 'regex', 'format', got 'python'",
    ),
    "a regex rule without a pattern": (
        {"rules": {"number": {"kind": "regex", "pattern": None}}},
        "evaluate",
        "rules.number.pattern: kind regex needs a pattern, got null",
    ),
    "a pattern that is not a regular expression": (
        {"rules": {"number": {"kind": "regex", "pattern": "(unclosed"}}},
        "online",
        "rules.number.pattern: not a regular expression (missing ), unterminated subpattern at position 0): "
        "'(unclosed'",
    ),
    "an upper clip below the lower": (
        {"online": {"epsilon_high": 0.1}},
        "online",
        "online.epsilon_high: 0.1 is below online.epsilon (0.2)",
    ),
    "one answer per prompt": ({"online": {"num_generations": 1}}, "online", "online.num_generations: "),
    "unknown model preset": (
        {"models": {"policy": "tiny-gpt3"}},
        "sft",
        "!models.policy: unknown preset 'tiny-gpt3' (did you mean 'tiny-gpt2'?)",
    ),
    "missing data file": (
        {"data": {"helpful": {**repo_params()["data"]["helpful"], "path": "data/missing.csv"}}},
        "prepare",
        "data.helpful.path: file not found: 'data/missing.csv'",
    ),
    # Several reward models: the combination must name them, weigh them all, and threshold on (0, 1).
    "combination names an unknown reward model": (
        {"reward_models": TWO_MODELS, "ppo": {"reward": {**LLAMA2, "safety": "safty"}}},
        "ppo",
        "ppo.reward.safety: unknown reward model 'safty' (did you mean 'safety'?)",
    ),
    "weights leave a reward model out": (
        {
            "reward_models": TWO_MODELS,
            "ppo": {"reward": {**LLAMA2, "combine": "weighted_sum", "weights": {"helpful": 1.0}}},
        },
        "ppo",
        "ppo.reward.weights: no weight for reward model 'safety'",
    ),
    "threshold outside (0, 1)": (
        {"reward_models": TWO_MODELS, "ppo": {"reward": {**LLAMA2, "safety_threshold": 1.0}}},
        "evaluate",
        "ppo.reward.safety_threshold: expected a float in (0, 1), got 1.0",
    ),
    "a judge of a set that is not there": (
        {"judges": {"helpful": {"data": "helpfull", "encoder": None}}},
        "reward",
        "judges.helpful.data: unknown data set 'helpfull' (did you mean 'helpful'?)",
    ),
    "a reward model without its judge": (
        {"reward_models": TWO_MODELS, "ppo": {"reward": {**LLAMA2}}},
        "compare",
        "judges: no judge 'safety': the judges' scores are combined as ppo.reward combines the reward models'",
    ),
    "confidence of 1": (
        {"eval": {"confidence": 1.0}},
        "compare",
        "eval.confidence: expected a float in (0, 1), got 1.0",
    ),
    "missing section key": (None, "reward", "reward.epochs: missing key"),
    "bad reward baseline": (
        {"ppo": {"reward_baseline": "median"}},
        "ppo",
        "ppo.reward_baseline: expected one of 'reference', 'none', got 'median'",
    ),
}

ARGS = {
    "compare": ["--evals", "nowhere", "--generations", "nowhere", "--out", "out/compare.json"],
    "prepare": [
        "--name",
        "helpful",
        "--input",
        "data/missing.csv",
        "--out-dir",
        "out/prepared",
        "--metrics",
        "out/data.json",
    ],
    "reward": [
        "--name",
        "helpful",
        "--data",
        "nowhere",
        "--out",
        "out/rm",
        "--metrics",
        "out/m.json",
        "--live",
        "out/live",
        "--checkpoints",
        "out/ck",
    ],
    "sft": [
        "--data",
        "prepared",
        "--out",
        "out/sft",
        "--metrics",
        "out/m.json",
        "--live",
        "out/live",
        "--checkpoints",
        "out/ck",
    ],
    "dpo": [
        "--data",
        "nowhere",
        "--sft",
        "nowhere",
        "--out",
        "out/dpo",
        "--metrics",
        "out/m.json",
        "--live",
        "out/live",
        "--checkpoints",
        "out/ck",
    ],
    "evaluate": [
        "--name",
        "sft",
        "--model",
        "nowhere",
        "--sft",
        "nowhere",
        "--data",
        "nowhere",
        "--rewards",
        "x",
        "--judges",
        "x",
        "--metrics",
        "out/m.json",
        "--generations",
        "out/g.jsonl",
        "--plot",
        "out/p.json",
    ],
    "online": [
        "--data",
        "nowhere",
        "--sft",
        "nowhere",
        "--rewards",
        "x",
        "--out",
        "out/online",
        "--metrics",
        "out/m.json",
        "--live",
        "out/live",
        "--checkpoints",
        "out/ck",
    ],
    "ppo": [
        "--data",
        "nowhere",
        "--sft",
        "nowhere",
        "--rewards",
        "x",
        "--out",
        "out/ppo",
        "--metrics",
        "out/m.json",
        "--live",
        "out/live",
        "--checkpoints",
        "out/ck",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_params_fail_in_one_line_naming_the_key(case, tmp_path, prepared_root):
    changes, stage, message = CASES[case]
    params = tmp_path / "params.yaml"
    if changes is None:
        write_params(params)
        params.write_text(params.read_text().replace("  epochs: 3\n", "", 1))
    else:
        write_params(params, **{k: v for k, v in changes.items()})
    (tmp_path / "prepared").symlink_to(prepared_root)
    result = run_here(stage, ["--params", "params.yaml", *ARGS[stage]], tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    # "!": an error found after loading (by the model loader, the accelerator), naming the key alone.
    expected = f"error: {message[1:]}" if message.startswith("!") else f"error: params.yaml: {message}"
    assert lines[0].startswith(expected), lines[0]
    assert not (tmp_path / "out").exists()
