"""DVC on the real dvc.yaml, in a fresh git copy of the repository (never the working tree)."""

import csv
import io
import json
import re
import subprocess
import sys

import pytest
import yaml

from alignkit.report import flatten as flat
from alignkit.report import to_svg
from tests.conftest import dvc, git_commit, stage_env

STAGES = [
    "compare",
    "dpo",
    "evaluate@dpo",
    "evaluate@online",
    "evaluate@ppo",
    "evaluate@sft",
    "judge@helpful",
    "judge@safety",
    "merge@dpo",
    "merge@online",
    "merge@ppo",
    "merge@sft",
    "online",
    "ppo",
    "prepare@feedback",
    "prepare@helpful",
    "prepare@safety",
    "pretrained",
    "report",
    "reward@helpful",
    "reward@safety",
    "sft",
]
EVALUATIONS = ["evaluate@dpo", "evaluate@online", "evaluate@ppo", "evaluate@sft"]
MODELS = ("sft", "ppo", "dpo", "online")


def ran(output, checks=False):
    """The stages a dvc output says it ran, sorted; check_params, which runs after any change to params.yaml,
    only with checks=True."""
    names = sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))
    return names if checks else [n for n in names if n != "check_params"]


@pytest.fixture(scope="module")
def built(built_repo):
    return built_repo


def structure(repo):
    """What every run of the pipeline writes, whatever its size: the data sets' counts, both reward models, every
    training curve, one metrics schema for every evaluated model."""
    data = json.loads((repo / "metrics" / "data" / "helpful.json").read_text())
    assert data["rows_kept"] == sum(data["splits"].values()) and data["unsafe_prompts"] == 0
    safety = json.loads((repo / "metrics" / "data" / "safety.json").read_text())
    assert 0.3 < safety["unsafe_prompts"] / safety["rows_kept"] < 0.7
    for name in ("helpful", "safety"):
        assert (repo / "models" / "reward" / name / "reward_model.pth").is_file()
    evals = {m: json.loads((repo / "metrics" / "eval" / f"{m}.json").read_text()) for m in MODELS}
    assert len({frozenset(flat(e)) for e in evals.values()}) == 1  # one schema for every model
    assert set(evals["sft"]["reward_models"]) == set(evals["sft"]["judges"]) == {"helpful", "safety"}
    assert data["splits"]["judge"] > 0 and safety["splits"]["judge"] > 0  # the judges' split, no other stage's
    for name in ("helpful", "safety"):
        assert (repo / "models" / "judge" / name / "reward_model.pth").is_file()
    compared = json.loads((repo / "metrics" / "compare.json").read_text())
    assert compared["score"] == "judge" and set(compared["models"]) == set(MODELS)
    assert len(compared["tests"]) == 6  # each pair of the four models
    assert compared["verdict"]["text"] and compared["verdict"]["top"] in MODELS
    # each rule's pass rate for every model, over the prompts it applies to
    assert set(evals["sft"]["rules"]) == {"number", "ends_turn"}
    assert evals["sft"]["rules"]["ends_turn"]["n"] == evals["sft"]["n"] > evals["sft"]["rules"]["number"]["n"] > 0
    ppo = json.loads((repo / "metrics" / "ppo.json").read_text())
    assert set(ppo["val_model_scores_after"]) == set(ppo["train_model_scores"]) == {"helpful", "safety"}
    for stage, curves in (
        ("reward/helpful", ["accuracy", "loss", "lr"]),
        ("reward/safety", ["accuracy", "loss", "lr"]),
        ("sft", ["loss", "lr"]),
        ("dpo", ["loss", "lr", "margin", "reward_accuracy"]),
        (
            "ppo",
            [
                "clipfrac",
                "entropy",
                "kl",
                "kl_coef",
                "loss",
                "lr",
                "response_length",
                "reward",
                "score",
                "score_helpful",
                "score_safety",
            ],
        ),
        (
            "online",
            [
                "clipfrac",
                "group_reward_std",
                "kl",
                "loss",
                "lr",
                "response_length",
                "reward",
                "rule_ends_turn",
                "rule_number",
                "score",
                "score_helpful",
                "score_safety",
                "zero_variance_share",
            ],
        ),
    ):
        found = sorted(p.stem for p in (repo / "dvclive" / stage / "plots" / "metrics" / "train").iterdir())
        if stage == "online":  # a rule's curve has points at the steps whose prompts it applies to, if any
            found = [c for c in found if c != "rule_number"]
        assert found == [c for c in curves if c != "rule_number"], (stage, found)
    return evals


def test_repro_builds_every_stage_then_does_nothing(small_repo):
    """The reduced sample (conftest.SMALL, params.yaml changed and committed, so check_params runs too) through
    every stage; a second `dvc repro` runs nothing and changes no file."""
    repo, first = small_repo
    assert ran(first, checks=True) == sorted([*STAGES, "check_params"])
    data = json.loads((repo / "metrics" / "data" / "helpful.json").read_text())
    assert data["rows_kept"] == 240 and data["rows_sampled_out"] == data["rows_in"] - 240
    structure(repo)

    second = dvc(repo, "repro")
    assert ran(second, checks=True) == []
    assert "Data and pipelines are up to date" in second
    assert "up to date" in dvc(repo, "status")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout  # a no-op repro changes no file


@pytest.mark.slow
def test_the_shipped_sample_trains_well_and_only_floating_point_outputs_differ(built):
    """The whole shipped sample, as a user's first `dvc repro`: every model learns, and the rebuild differs from
    the committed dvc.lock only in what floating-point kernels make."""
    repo, first = built
    # check_params has no outputs, and the committed dvc.lock records this very params.yaml: nothing to check.
    # compare reads only committed metrics and the generations: where those come out byte for byte as committed
    # (this CPU kind), its inputs are unchanged and DVC skips it.
    assert ran(first, checks=True) in (STAGES, [s for s in STAGES if s != "compare"])
    data = json.loads((repo / "metrics" / "data" / "helpful.json").read_text())
    assert data["rows_in"] == data["rows_kept"] > 2000
    assert data["splits"]["train"] > 1400 and data["splits"]["judge"] > 400 and data["unsafe_prompts"] == 0
    assert 150 <= data["splits"]["test"] <= 250 and 150 <= data["splits"]["validation"] <= 250
    safety = json.loads((repo / "metrics" / "data" / "safety.json").read_text())
    assert safety["rows_in"] == safety["rows_kept"] > 900 and 0.4 < safety["unsafe_prompts"] / safety["rows_kept"] < 0.6
    evals = structure(repo)
    for name in ("helpful", "safety"):  # each reward model on its own validation split
        assert json.loads((repo / "metrics" / "reward" / f"{name}.json").read_text())["val_accuracy"] >= 0.9, name
    assert json.loads((repo / "metrics" / "sft.json").read_text())["val_loss"] < 2.0
    assert json.loads((repo / "metrics" / "dpo.json").read_text())["val_reward_accuracy"] >= 0.7
    # PPO raises the combined held-out reward over SFT, and not the safety violation rate beyond its interval
    assert evals["ppo"]["reward_mean"] > evals["sft"]["reward_mean"]
    assert evals["ppo"]["safety_violation_rate_ci"][0] <= evals["sft"]["safety_violation_rate"]
    ppo = json.loads((repo / "metrics" / "ppo.json").read_text())
    assert ppo["val_score_after"] > ppo["val_score_before"]
    # Online RL raises the held-out reward over SFT, and the end-of-turn rule's pass rate on the test prompts
    assert evals["online"]["reward_mean"] > evals["sft"]["reward_mean"]
    assert evals["online"]["rules"]["ends_turn"]["pass_rate"] > evals["sft"]["rules"]["ends_turn"]["pass_rate"]
    online = json.loads((repo / "metrics" / "online.json").read_text())
    assert online["val_reward_after"] > online["val_reward_before"] and online["reference_forwards"] > 0
    # The rebuild (committed in the copy as HEAD) differs from the project's dvc.lock (HEAD~1) only in
    # what floating-point kernels make: on another CPU kind, the trained outputs' hashes.
    differing = (
        lock_entries(git_show(repo, "HEAD~1", "dvc.lock")).items()
        ^ lock_entries(git_show(repo, "HEAD", "dvc.lock")).items()
    )
    unexpected = sorted({key for key, _ in differing if not FLOAT_MADE.match(key[2])})
    assert not unexpected, unexpected


# The outputs whose bytes depend on floating-point kernels, and so on the CPU kind
# (docs/reliability.md, "Reproducible").
# Prepared data, finished checkpoints (checkpoint.json), params and code are the same everywhere. A reward model's
# directory holds its weights and score statistics as well as its tokenizer and config; ppo and evaluate depend on
# models/reward, the directory of all of them.
FLOAT_MADE = re.compile(
    r"^(models/(reward(/[^/]+)?|judge(/[^/]+)?|sft|dpo|ppo|online|merged/(sft|dpo|ppo|online))|generations(/.+)?"
    r"|dvclive(/.+/plots/metrics)?|plots/eval/.+|metrics/eval"
    r"|metrics(/(reward/[^/]+|judge/[^/]+|sft|dpo|ppo|online|eval/.+|compare)\.json)?|report)$"
)

# Rebuilt metrics agree with the committed ones within these tolerances (docs/reliability.md, "Reproducible"):
# - a share of counted items (accuracies, win rates over ~200 pairs) within SHARE_ATOL, 4 items: a pair whose two
#   scores are nearly tied flips with the last bits; between CPU kinds 2 of 197 flipped (0.0102);
# - every other metric within RTOL of its value (absolute below 1): the largest move measured between CPU kinds
#   is 2.4e-3 (PPO's val_score_after, where sampling compounds over 24 steps); stages without sampling move <1e-4.
# A real regression (a broken loss, a wrong mask, a lost clamp) moves them by far more.
SHARE_ATOL = 0.02
RTOL = 0.01
SHARES = re.compile(r"(accuracy|win_rate)")


P_ATOL = 0.05  # a bootstrap p-value: near-ties among a thousand resamples move it by a few hundredths
# The KL to SFT sums log-prob ratios over whole sampled answers: an answer sampled differently on the other kind moves
# it most. Measured between kernel levels: DPO's 10.949 -> 10.780 (1.5%); a wrong reference moves it many times that.
KL_RTOL = 0.05
WORDS = re.compile(r"(verdict\.text|verdict\.tradeoff)$")  # sentences that quote the numbers checked above


# A mean over sampled answers (a reward or judge score) moves with the answers a kernel difference samples otherwise,
# most for a model far from SFT (DPO's, 10.8 nats: its helpful judge mean's interval bound moved 0.008, its reward
# model's 0.028, between kernel levels). Such a mean, or a bound of its interval, may move by this share of the
# committed interval's half-width: well inside the estimate's own noise; a bug-sized move still fails.
NOISE_SHARE = 0.25


def within_tolerance(key, committed, rebuilt, half_width=None):
    """half_width: that of the committed 95% interval of this mean (None: it has none)."""
    if isinstance(committed, list) and committed and isinstance(committed[0], (int, float)):  # an interval
        half = _half_width(committed)
        return len(committed) == len(rebuilt) and all(
            within_tolerance(key, a, b, half) for a, b in zip(committed, rebuilt)
        )
    if WORDS.search(key):
        return isinstance(rebuilt, str)
    if not isinstance(committed, (int, float)) or isinstance(committed, bool):  # a name, a flag, a list of names
        return committed == rebuilt
    if key.endswith(".p"):
        return abs(rebuilt - committed) <= P_ATOL
    if "kl_to_reference" in key or key.endswith(".kl"):
        return abs(rebuilt - committed) <= KL_RTOL * max(1.0, abs(committed))
    if SHARES.search(key):
        return abs(rebuilt - committed) <= SHARE_ATOL
    allowed = RTOL * max(1.0, abs(committed))
    return abs(rebuilt - committed) <= max(allowed, NOISE_SHARE * half_width if half_width else 0.0)


def _half_width(interval):
    return (interval[1] - interval[0]) / 2 if isinstance(interval, list) and len(interval) == 2 else None


def test_the_tolerance_tells_a_regression_from_another_cpu_kind():
    """Moves measured between CPU kinds pass; moves of the size a bug makes fail."""
    assert within_tolerance("val_score_after", 6.923196, 6.939553)  # PPO, AVX-512 vs AVX2 kernels
    assert within_tolerance("win_rate_vs_reference", 0.637056, 0.626904)  # 2 of 197 near-ties flipped
    assert within_tolerance("val_margin", 10.275652, 10.27575)
    assert not within_tolerance("val_loss", 0.266936, 0.29)  # DPO's val loss 9% worse
    assert not within_tolerance("val_reward_accuracy", 0.954315, 0.92)  # 7 of 197 pairs lost
    assert not within_tolerance("reward_mean", 5.7227, 5.55)  # 3% lower reward
    assert not within_tolerance("val_score_after", 6.923196, 4.308230)  # PPO learned nothing
    assert within_tolerance("reward_mean_ci", [0.581, 0.709], [0.583, 0.707])  # an interval, bound by bound
    assert not within_tolerance("win_rate_vs_reference_ci", [0.41, 0.52], [0.41, 0.58])
    assert within_tolerance("tests.sft vs dpo.p", 0.147, 0.171) and not within_tolerance(
        "tests.sft vs dpo.p", 0.147, 0.4
    )
    assert within_tolerance("verdict.best", "ppo", "ppo") and not within_tolerance("verdict.best", "ppo", None)
    assert within_tolerance("verdict.text", "ppo: ... 0.088 ...", "ppo: ... 0.087 ...")
    assert within_tolerance("kl_to_reference", 10.948741, 10.780426)  # DPO, between kernel levels
    assert not within_tolerance("kl_to_reference", 10.948741, 12.5)  # 14% further from SFT
    # DPO's helpful judge mean between kernel levels: its interval's bound moved a sixtieth of its half-width
    assert within_tolerance("judges.helpful.mean_ci", [-2.300685, -1.358011], [-2.292986, -1.351])
    assert within_tolerance("reward_models.helpful.mean_ci", [1.964061, 3.154560], [1.992021, 3.177081])
    assert within_tolerance("reward_mean", 0.7803, 0.79, half_width=0.064)
    assert not within_tolerance("reward_mean", 0.7803, 0.70, half_width=0.064)  # 10% lower: more than the noise


def git_show(repo, rev, path):
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True, check=True).stdout


def lock_entries(text):
    """{(stage, field, path): value} for every cmd, params, dep and out hash of a dvc.lock."""
    entries = {}
    for stage, body in yaml.safe_load(text)["stages"].items():
        entries[(stage, "cmd", "")] = body["cmd"]
        entries[(stage, "params", "")] = json.dumps(body.get("params"), sort_keys=True)
        for field in ("deps", "outs"):
            for entry in body.get(field, []):
                entries[(stage, field, entry["path"])] = json.dumps(entry, sort_keys=True)
    return entries


@pytest.mark.slow
def test_rebuilt_metrics_agree_with_the_committed_ones(built):
    """The shipped sample, rebuilt here, reproduces every committed metric within the tolerances above: a
    regression fails, another CPU kind does not."""
    repo, _ = built
    committed = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", "HEAD~1", "metrics"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # data/{helpful,safety,feedback}, reward/{helpful,safety}, judge/{helpful,safety}, sft, dpo, ppo, online, eval/*,
    # compare
    assert len(committed) == 16, committed
    off = []
    for path in committed:
        before = flat(json.loads(git_show(repo, "HEAD~1", path)))
        after = flat(json.loads((repo / path).read_text()))
        assert before.keys() == after.keys(), path
        off += [
            (path, key, before[key], after[key])
            for key in before
            if not within_tolerance(key, before[key], after[key], _half_width(before.get(f"{key}_ci")))
        ]
    assert not off, off


def dry_run(repo, section, key, value):
    """The stages `dvc repro` would run after setting one param (section: a dotted path), without running them."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    target = params
    for part in section.split("."):
        target = target[part]
    target[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        return ran(dvc(repo, "repro", "--dry"))
    finally:
        subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, check=True)


@pytest.mark.slow
def test_changing_a_param_reruns_only_its_readers(small_copy):
    """`repro --dry` lists the stages whose own inputs changed; the stages downstream of them
    rerun as their inputs change (the experiment test below shows evaluate@dpo following dpo)."""
    judges_and_reward_models = ["judge@helpful", "judge@safety", "reward@helpful", "reward@safety"]
    assert dry_run(small_copy, "reward", "lr", 5e-4) == judges_and_reward_models  # a key they all share
    # one model's own key: that model, and what reads the reward models' params (their names)
    assert dry_run(small_copy, "reward_models.safety", "epochs", 4) == [*EVALUATIONS, "online", "ppo", "reward@safety"]
    assert dry_run(small_copy, "ppo", "lr", 5e-5) == ["ppo"]
    assert dry_run(small_copy, "online", "beta", 0.0) == ["online"]
    # a rule: the online stage's reward and every evaluation's pass rates
    assert dry_run(small_copy, "rules.number", "kind", "exact") == [*EVALUATIONS, "online"]
    assert dry_run(small_copy, "eval", "batch_size", 16) == EVALUATIONS
    assert dry_run(small_copy, "ppo", "top_p", 0.9) == [*EVALUATIONS, "ppo"]
    assert dry_run(small_copy, "ppo.reward", "combine", "weighted_sum") == [*EVALUATIONS, "online", "ppo"]
    assert dry_run(small_copy, "models", "reward", "bert-base-uncased") == judges_and_reward_models
    # a judge's own key: that judge and the evaluations (which read the judges); nothing that trains a policy
    assert dry_run(small_copy, "judges.safety", "epochs", 4) == [*EVALUATIONS, "judge@safety"]
    # the confidence level: the evaluations' intervals and compare's tests, nothing trained
    assert dry_run(small_copy, "eval", "confidence", 0.9) == ["compare", *EVALUATIONS]
    assert dry_run(small_copy, "data.safety", "filter", [{"column": "unsafe", "op": "==", "value": True}]) == [
        "prepare@safety"
    ]


@pytest.mark.slow
@pytest.mark.same_run_only
def test_experiment_on_one_reward_models_lr_reruns_it_ppo_and_the_evaluations(built_copy):
    out = dvc(built_copy, "exp", "run", "-n", "safety-lr", "-S", "+reward_models.safety.lr=2e-3")
    # and merge@ppo and merge@online, which pass the new policies on to their evaluations; not reward@helpful, sft, dpo
    trained = ["merge@online", "merge@ppo", "online", "ppo"]
    assert ran(out) == ["compare", *EVALUATIONS, *trained, "report", "reward@safety"]
    assert json.loads((built_copy / "metrics" / "reward" / "safety.json").read_text())["val_accuracy"] >= 0.9


@pytest.mark.slow
@pytest.mark.same_run_only
def test_experiment_on_dpo_lr_reruns_exactly_dpo_and_its_evaluation(built_copy):
    out = dvc(built_copy, "exp", "run", "-n", "dpo-lr-1e-5", "-S", "dpo.lr=1e-5")
    assert ran(out) == ["compare", "dpo", "evaluate@dpo", "merge@dpo", "report"]

    table = list(csv.DictReader(io.StringIO(dvc(built_copy, "exp", "show", "--no-pager", "--csv"))))
    row = next(r for r in table if r["Experiment"] == "dpo-lr-1e-5")
    assert float(row["dpo.lr"]) == 1e-5
    assert row["metrics/eval/dpo.json:reward_mean"] and row["metrics/dpo.json:val_loss"]

    # The baseline rebuilt here (HEAD) vs the experiment.
    diff = json.loads(dvc(built_copy, "metrics", "diff", "--json"))
    changed = {path for path, values in diff.items() if any(v.get("diff") for v in values.values())}
    assert {"metrics/dpo.json", "metrics/eval/dpo.json"} <= changed
    assert not changed & {
        "metrics/eval/sft.json",
        "metrics/eval/ppo.json",
        "metrics/sft.json",
        "metrics/ppo.json",
        "metrics/reward/helpful.json",
        "metrics/reward/safety.json",
    }
    shown = dvc(built_copy, "metrics", "show")
    assert all(f"metrics/eval/{m}.json" in shown for m in ("sft", "ppo", "dpo"))


@pytest.mark.slow
@pytest.mark.same_run_only
def test_experiment_on_online_beta_reruns_exactly_online_and_its_evaluation(built_copy):
    """beta 0: no reference is loaded or run (its forward passes counted: none), and no KL to it is measured."""
    out = dvc(built_copy, "exp", "run", "-n", "online-beta-0", "-S", "online.beta=0")
    assert ran(out) == ["compare", "evaluate@online", "merge@online", "online", "report"]
    online = json.loads((built_copy / "metrics" / "online.json").read_text())
    assert online["reference_forwards"] == 0 and online["kl"] is None
    baseline = json.loads(git_show(built_copy, "HEAD", "metrics/online.json"))
    assert baseline["reference_forwards"] == 24 and baseline["kl"] > 0  # one per step at beta 0.04
    assert not (built_copy / "dvclive" / "online" / "plots" / "metrics" / "train" / "kl.tsv").exists()


def test_plots_show_draws_the_training_curves_offline(small_copy):
    """`dvc plots show` fills the offline template (.dvc/config): Vega inlined, nothing fetched, and every plot's
    spec, drawn by the same Vega (vl-convert), has marks: a line through each curve, the comparison's bars."""
    out = dvc(small_copy, "plots", "show", "-o", "plots_html")
    html = (small_copy / "plots_html" / "index.html").read_text()
    for stage in ("reward/helpful", "reward/safety", "sft", "dpo", "ppo", "online"):
        assert f"dvclive/{stage}/plots/metrics/train/loss.tsv" in html
        # one point per epoch; the online stages have none
        assert f"dvclive/{stage}/plots/metrics/val/loss.tsv" in html or stage in ("ppo", "online")
    assert "Model comparison on the test split" in html
    assert "plots_html" in out
    assert "window.vegaEmbed=" in html and not re.search(r"<script[^>]+src=", html)
    specs = [json.loads(s) for s in re.findall(r"var spec = (\{.*?\});\n\s*vegaEmbed\(", html, re.S)]
    assert len(specs) >= 30
    for spec in specs:
        svg = to_svg(spec)
        drawn = re.findall(r'class="mark-(?:line|rect) role-mark[^"]*"[^>]*><path[^>]* d="M[^"]+"', svg)
        assert drawn, spec.get("title")


def test_the_report_shows_every_model_and_stage(small_repo):
    repo, printed = small_repo
    assert "report: report/report.html and report.md (4 models, 10 charts, 8 prompts side by side" in printed
    page = (repo / "report" / "report.html").read_text()
    for chart in (
        "comparison",
        "curves-reward-helpful",
        "curves-reward-safety",
        "curves-sft",
        "curves-dpo",
        "curves-ppo",
        "curves-online",
    ):
        assert f'<figure id="chart-{chart}"' in page
    assert page.count('<tr class="sample">') == 8


def test_bad_input_under_dvc_fails_and_leaves_no_output(repo_copy):
    bad = repo_copy / "data" / "bad.csv"
    bad.write_text("Question,More_Prefered,Less_Prefered,Answer\nWhat?,,No.,\n")
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "prepare@helpful", "-S", "data.helpful.path=data/bad.csv"],
        cwd=repo_copy,
        capture_output=True,
        text=True,
        env=stage_env(repo_copy),
    )
    assert result.returncode != 0
    assert (
        "error: data/bad.csv: 1 of 1 rows are bad (100.0%, more than prepare.max_drop_fraction=0.05): "
        "empty_cell=1; e.g. data/bad.csv: row 1 (line 2), column 'More_Prefered': empty cell"
    ) in result.stderr
    assert not (repo_copy / "data" / "prepared" / "helpful").exists()
    assert not (repo_copy / "metrics" / "data" / "helpful.json").exists()


CHAT_PREFERENCES_FILTER = (
    'data.helpful.filter=[{column:score_chosen,op:">=",value:7},{column:score_rejected,op:"<=",value:5}]'
)


@pytest.mark.slow
def test_a_reference_free_objective_and_kto_on_the_feedback_sample_run_end_to_end(small_copy):
    """`dvc exp run -S dpo.loss_type=...`, as docs/objectives.md shows it: SimPO (no reference loaded) and KTO on the
    shipped unpaired feedback (unequal shares of desirable and undesirable answers) each rerun dpo and what reads
    it; the evaluation and the report name the objective; `dvc exp show` compares them."""
    tuned = ["compare", "dpo", "evaluate@dpo", "merge@dpo", "report"]
    printed = dvc(small_copy, "exp", "run", "-n", "simpo", "-S", "dpo.loss_type=simpo")
    assert ran(printed) == tuned
    metrics = json.loads((small_copy / "metrics" / "dpo.json").read_text())
    assert (metrics["objective"], metrics["reference"]) == ("simpo", "none")  # no reference model was loaded
    assert "(simpo, reference none;" in printed
    assert json.loads((small_copy / "metrics" / "eval" / "dpo.json").read_text())["objective"] == "simpo"
    assert json.loads((small_copy / "models" / "merged" / "dpo" / "alignment.json").read_text())["objective"] == "simpo"

    printed = dvc(small_copy, "exp", "run", "-n", "kto", "-S", "dpo.loss_type=kto", "-S", "dpo.data=[feedback]")
    assert ran(printed) == tuned
    data = json.loads((small_copy / "metrics" / "data" / "feedback.json").read_text())
    assert data["schema"] == "unpaired" and data["rows_dropped"]["bad_label"] == 3
    assert data["rows_dropped"]["empty_cell"] == 2 and data["desirable"] > data["undesirable"]
    metrics = json.loads((small_copy / "metrics" / "dpo.json").read_text())
    assert (metrics["objective"], metrics["reference"]) == ("kto", "precomputed")
    assert metrics["examples"]["desirable"] > metrics["examples"]["undesirable"] > 0
    assert metrics["val_pairs"] > 0 and 0 <= metrics["val_preference_accuracy"] <= 1
    assert json.loads((small_copy / "metrics" / "eval" / "dpo.json").read_text())["objective"] == "kto"
    assert "kto" in (small_copy / "report" / "report.md").read_text()
    table = list(csv.DictReader(io.StringIO(dvc(small_copy, "exp", "show", "--csv"))))
    objectives = {row["Experiment"]: row["dpo.loss_type"] for row in table if row["Experiment"] in ("simpo", "kto")}
    assert objectives == {"simpo": "simpo", "kto": "kto"}


@pytest.mark.slow
def test_dvc_exp_run_on_the_conversational_sample_runs_every_stage_with_the_chat_preset(small_copy):
    """The shipped sample in trl's implicit-prompt conversational format (data/sample/chat_preferences.jsonl),
    filtered on its scores, through every stage with the tiny-llama chat preset: one `dvc exp run`, as
    docs/data.md shows it."""
    printed = dvc(
        small_copy,
        "exp",
        "run",
        "-n",
        "chat-prefs",
        "-S",
        "models.policy=tiny-llama",
        "-S",
        "data.helpful.path=data/sample/chat_preferences.jsonl",
        "-S",
        CHAT_PREFERENCES_FILTER,
    )
    unchanged = ("prepare@safety", "prepare@feedback", "reward@safety", "judge@safety", "pretrained")
    assert ran(printed) == sorted(s for s in STAGES if s not in unchanged)
    assert "prepare@helpful: data/sample/chat_preferences.jsonl (conversational schema): 400 rows in" in printed
    data = json.loads((small_copy / "metrics" / "data" / "helpful.json").read_text())
    assert data["schema"] == "conversational" and data["source"] == {"path": "data/sample/chat_preferences.jsonl"}
    assert set(data["rows_filtered"]) == {"score_chosen >= 7", "score_rejected <= 5"}
    assert data["rows_dropped"]["empty_turn"] <= 4 and data["prompt_messages"]["max"] == 6  # system + 2 exchanges
    roles = [
        [m["role"] for m in json.loads(line)["prompt"]]
        for line in open(small_copy / "data/prepared/helpful/train.jsonl")
    ]
    assert any(r[0] == "system" for r in roles) and all(r[-1] == "user" for r in roles)
    tokenizer = json.loads((small_copy / "models" / "merged" / "sft" / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in tokenizer["chat_template"]
    for name in ("sft", "dpo", "ppo", "online", "eval/sft", "eval/dpo", "eval/ppo", "eval/online"):
        metrics = flat(json.loads((small_copy / "metrics" / f"{name}.json").read_text()))
        assert metrics and all(v == v for v in metrics.values() if isinstance(v, float)), name  # written, no NaN
    assert json.loads((small_copy / "metrics" / "sft.json").read_text())["fitted"]["question_dropped"] == 0
    assert "chat-prefs" in dvc(small_copy, "exp", "show", "--csv")


@pytest.mark.slow
@pytest.mark.same_run_only
def test_a_chat_model_with_lora_and_one_reward_model_on_multi_turn_conversations_runs_every_stage(repo_copy):
    """`models.policy: tiny-llama` on the shipped multi-turn sample (HH dialogues with a system column), shortened,
    with one data set and one reward model (as the coursework had) and LoRA adapters for sft and dpo: every stage
    runs through the chat template; sft and dpo write adapters (tracked in dvc.lock), the merge stage folds them
    into plain models, and evaluate reads those. An experiment on dpo.lora.r reruns dpo, its merge and its
    evaluation only."""
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["models"]["policy"] = "tiny-llama"
    params["data"] = {"chat": {**params["data"]["helpful"], "path": "data/sample/conversations.jsonl"}}
    params["data"]["chat"]["columns"]["system"] = "system"
    params["reward_models"] = {"chat": {"data": "chat", "encoder": None}}
    params["judges"] = {"chat": {"data": "chat", "encoder": None}}
    params["ppo"]["reward"].update(
        combine="weighted_sum", weights={"chat": 1.0}, helpfulness=None, safety=None, whiten=False
    )
    for section in ("sft", "dpo", "ppo", "online", "eval"):
        params[section]["data"] = ["chat"]
    params["reward"]["epochs"] = 1
    params["sft"]["epochs"] = 2
    params["dpo"]["epochs"] = 1
    params["ppo"]["max_steps_per_epoch"] = 3
    params["online"]["max_steps_per_epoch"] = 3
    for section in ("sft", "dpo", "eval"):
        params[section]["max_length"] = 192
    for section in ("sft", "dpo", "ppo", "online", "eval"):
        params[section]["max_prompt_length"] = 160
    for section in ("sft", "dpo", "online"):
        params[section]["lora"]["enabled"] = True
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    printed = dvc(repo_copy, "repro")
    assert ran(printed) == sorted(
        [s for s in STAGES if not s.endswith(("@helpful", "@safety", "@feedback"))]
        + ["judge@chat", "prepare@chat", "reward@chat"]
    )
    assert "6 {'empty_answer': 6} dropped" in printed  # the sample's rows with an empty last answer

    data = json.loads((repo_copy / "metrics" / "data" / "chat.json").read_text())
    assert (
        data["rows_dropped"]["empty_answer"] == 6 and data["prompt_messages"]["max"] == 8
    )  # system + 4 questions + 3 answers
    first = json.loads((repo_copy / "data" / "prepared" / "chat" / "train.jsonl").open().readline())
    assert [m["role"] for m in first["prompt"]][:2] == ["system", "user"]
    config = json.loads((repo_copy / "models" / "merged" / "sft" / "config.json").read_text())
    tokenizer = json.loads((repo_copy / "models" / "merged" / "sft" / "tokenizer_config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "<|assistant|>" in tokenizer["chat_template"]
    for name in ("reward/chat", "sft", "dpo", "ppo", "online", "eval/sft", "eval/dpo", "eval/ppo", "eval/online"):
        metrics = flat(json.loads((repo_copy / "metrics" / f"{name}.json").read_text()))
        assert metrics and all(v == v for v in metrics.values() if isinstance(v, float)), name  # written, no NaN
    evaluated = json.loads((repo_copy / "metrics" / "eval" / "ppo.json").read_text())
    assert list(evaluated["reward_models"]) == ["chat"] and "safety_violation_rate" not in evaluated
    # one reward model, weight 1, not whitened: the combined reward is its raw score
    assert evaluated["reward_mean"] == pytest.approx(evaluated["reward_models"]["chat"]["mean"], abs=1e-6)
    dpo = json.loads((repo_copy / "metrics" / "dpo.json").read_text())
    assert dpo["val_loss"] < dpo["val_loss_before"]

    # Adapters, not whole models, are the outputs of sft, dpo and online (sft's preset base beside its adapter).
    for name in ("sft", "dpo", "online"):
        files = {p.name for p in (repo_copy / "models" / name).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    assert (
        json.loads((repo_copy / "models" / "dpo" / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "models/sft"
    )
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]
    assert "models/dpo" in [o["path"] for o in lock["dpo"]["outs"]]
    assert {"models/dpo", "models/sft"} <= {d["path"] for d in lock["merge@dpo"]["deps"]}
    assert "models/merged/dpo" in {d["path"] for d in lock["evaluate@dpo"]["deps"]}
    # online's reference: its policy with the adapter switched off, run at every step
    assert json.loads((repo_copy / "metrics" / "online.json").read_text())["reference_forwards"] > 0
    for name in ("sft", "ppo", "dpo", "online"):
        assert (repo_copy / "models" / "merged" / name / "model.safetensors").is_file()
        assert not (repo_copy / "models" / "merged" / name / "adapter_config.json").exists()

    git_commit(repo_copy, "chat model with LoRA")
    out = dvc(repo_copy, "exp", "run", "-S", "dpo.lora.r=4")
    assert ran(out) == ["compare", "dpo", "evaluate@dpo", "merge@dpo", "report"]
    assert json.loads((repo_copy / "models" / "dpo" / "adapter_config.json").read_text())["r"] == 4
    generation = json.loads((repo_copy / "generations" / "dpo.jsonl").open().readline())
    assert generation["question"].startswith("System: ") and "\n\nHuman: " in generation["question"]
    # The report shows the conversation turn by turn, its system turn first.
    assert '<p class="turn"><span class="role">system:</span>' in (repo_copy / "report" / "report.html").read_text()
