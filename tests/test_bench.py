"""The benchmark keeps working: a tiny configuration end to end, and its pure pieces by hand.

Timings are reported by the benchmark, never asserted here.
"""

import json
import math
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, stage_env

sys.path.insert(0, str(REPO / "bench"))

import compare  # noqa: E402
import peers  # noqa: E402
from run import BEGIN, PAGE, merge, results_block  # noqa: E402

from alignkit.training import cpu_has_native_bf16  # noqa: E402


def test_dpo_step_flops_by_hand():
    """n_layer 2, n_embd 4, n_positions 8, 1000 parameters, 2 rows of 8 tokens:
    N = 1000 - 8*4 = 968; per token 6*968 + 12*2*4*8 = 5808 + 768 = 6576; 16 tokens -> 105216."""
    from transformers import GPT2Config

    config = GPT2Config(n_layer=2, n_embd=4, n_head=1, n_positions=8, vocab_size=10)
    assert compare.dpo_step_flops(config, 1000, 2, 8) == 105216


def test_peer_rebuilds_bert_token_types():
    """[CLS] q q [SEP] a [SEP] [PAD]: type 0 through the first [SEP], 1 after it, 0 on padding."""
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids):
            seen["types"] = token_type_ids.tolist()
            return torch.zeros(input_ids.shape[0])

    cls, sep, pad = 2, 3, 0
    ids = torch.tensor([[cls, 7, 8, sep, 9, sep, pad]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    peers.SequenceClassifier(Probe(), sep)(ids, mask)
    assert seen["types"] == [[0, 0, 0, 0, 1, 1, 0]]


def test_peer_dpo_batch_labels_mask_prompt_and_padding():
    batch = peers.dpo_batch([(([5, 6, 7], 2), ([5, 6, 8, 9], 2))], pad_id=0, device="cpu")
    assert batch["chosen_input_ids"].tolist() == [[5, 6, 7]]
    assert batch["chosen_labels"].tolist() == [[-100, -100, 7]]
    assert batch["rejected_labels"].tolist() == [[-100, -100, 8, 9]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 1, 1, 1]]


def test_settings_merge_overrides_nested_keys_only():
    base = {"warmup": 2, "at_scale": {"pairs": 1, "seq_len": 256}}
    assert merge(base, {"at_scale": {"pairs": 8}}) == {"warmup": 2, "at_scale": {"pairs": 8, "seq_len": 256}}


def stages_of(results):
    return results["memory"]["stages"]


@pytest.mark.slow
@pytest.mark.same_run_only
def test_tiny_benchmark_writes_results_and_table(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--profile",
            "tiny",
            "--out",
            str(out),
            "--keep",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        env=stage_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())

    native = cpu_has_native_bf16()  # without it, the bf16 rows are skipped, and the results say so
    assert bool(results["skipped"]) is not native
    paths = [c["path"] for c in results["comparisons"]]
    assert paths[:6] == [
        "reward-model training",
        "DPO training",
        "DPO training",
        "PPO iteration",
        "RLOO iteration",
        "evaluation generation",
    ]
    assert {"hardware efficiency (fp32)", *(["hardware efficiency (bf16)"] if native else [])} == set(paths[6:])
    for c in results["comparisons"]:
        assert c["ours"] > 0 and c["theirs"] > 0
    for c in results["comparisons"][3:6]:
        assert c["ratio"] == pytest.approx(c["ours"] / c["theirs"])
    # Reward and DPO: the median over steps of the per-step ratio on the same batch.
    reward, dpo = results["details"]["reward"], results["details"]["dpo"]
    assert results["comparisons"][0]["ratio"] == reward["ratio_theirs"] > 0
    assert [c["ratio"] for c in results["comparisons"][1:3]] == [
        dpo["ratio_theirs_default"],
        dpo["ratio_theirs_precompute"],
    ]
    # Less padded work: length-grouped batches pad less than random ones.
    pad = results["padding"]
    assert pad["reward"]["grouped"] < pad["reward"]["random"] and pad["dpo"]["grouped"] < pad["dpo"]["random"]
    assert 0 <= pad["reward"]["peer_timed"] <= pad["reward"]["ours_timed"] < 1  # the peer pads each side apart
    assert reward["cls_only_last_layer"]
    assert 0 < pad["dpo_lm_head_positions_share"] < 1
    ops = results["profile"]["ops"]
    assert ops and sum(o["share"] for o in ops) <= 1 and ops[0]["self_s"] >= ops[-1]["self_s"]
    # Speed is compared only where both sides computed the same thing on the same batch.
    for c in results["comparisons"][:3]:
        assert c["agreement"]["abs_diff"] <= compare.AGREE_TOL
    assert results["comparisons"][3]["agreement"]["max_abs_score_diff"] <= compare.AGREE_TOL
    # RLOO: trl's own lines give our advantages and our loss on a micro-batch of our rollout
    rloo = results["comparisons"][4]["agreement"]
    assert rloo["advantages_max_abs_diff"] <= compare.AGREE_TOL and rloo["abs_diff"] <= compare.AGREE_TOL
    assert rloo["theirs_loss"] != 0  # answers of different prompts: their advantages do not cancel
    assert results["comparisons"][5]["agreement"]["greedy_identical_share"] >= 0.9
    # Online RL beside PPO at an equal budget of generated answers, from the same pipeline run.
    side = results["online_vs_ppo"]
    assert side["ppo"]["answers_generated"] == side["online"]["answers_generated"] > 0
    for name in ("ppo", "online"):
        # the KL is a mean of sampled log-ratios: an estimate, which a short run can leave just below 0
        assert side[name]["seconds"] == stages_of(results)[name]["seconds"] and math.isfinite(side[name]["kl_to_sft"])
    assert "| online (grpo) |" in proc.stdout

    stages = results["memory"]["stages"]
    assert list(stages)[0].startswith(("check_params", "prepare@", "pretrained"))  # stages without inputs from another
    assert set(stages) == {
        "check_params",
        "pretrained",
        "prepare@helpful",
        "prepare@safety",
        "prepare@feedback",
        "reward@helpful",
        "reward@safety",
        "judge@helpful",
        "judge@safety",
        "sft",
        "dpo",
        "ppo",
        "online",
        "merge@sft",
        "merge@ppo",
        "merge@dpo",
        "merge@online",
        "evaluate@sft",
        "evaluate@ppo",
        "evaluate@dpo",
        "evaluate@online",
        "compare",
        "report",
    }
    assert all(s["peak_rss_mib"] > 0 for s in stages.values())
    last = "bf16" if native else "fp32"
    memory = results["memory"]["dpo_step_at_scale"]
    assert [(a["precision"], a["checkpointing"], bool(a["lora"]), a["objective"]) for a in memory] == [
        ("fp32", False, False, "sigmoid"),
        *([("bf16", False, False, "sigmoid")] if native else []),
        (last, True, False, "sigmoid"),
        ("fp32", False, True, "sigmoid"),
        (last, True, True, "sigmoid"),
        # the dpo stage's other objectives, in the first run's settings
        ("fp32", False, False, "sigmoid-live"),
        ("fp32", False, False, "simpo"),
        ("fp32", False, False, "orpo"),
    ]
    # SimPO and ORPO against DPO with its reference held and run each step, and with it precomputed
    assert [r["objective"] for r in results["objectives"]] == ["simpo", "orpo"]
    for r in results["objectives"]:
        assert r["memory_ratio"] == pytest.approx(r["peak_mib"] / r["dpo_live_peak_mib"])
        assert r["time_ratio"] == pytest.approx(r["step_s"] / r["dpo_live_s"]) and r["dpo_precomputed_s"] > 0
    assert "| simpo | none |" in proc.stdout and "| DPO (sigmoid) | a frozen copy, run each step |" in proc.stdout
    # Full vs LoRA in the same run and settings: the adapter is a small share of the model, both timed and measured.
    at_scale = results["details"]["dpo_step_at_scale"]
    assert [r["path"].rsplit(", ", 2)[1:] for r in results["lora"]] == [
        ["fp32", "checkpointing off)"],
        [last, "checkpointing on)"],
    ]
    for lora in results["lora"]:
        assert lora["trainable"] < 0.5 * at_scale[0]["params"] and lora["full_s"] > 0 and lora["lora_s"] > 0
        assert lora["memory_ratio"] == pytest.approx(lora["lora_peak_mib"] / lora["full_peak_mib"])
    assert "| whole model |" in proc.stdout and "| LoRA r=8, all linear layers" in proc.stdout
    assert results["dvc"]["status_s"] > 0 and results["dvc"]["repro_noop_s"] > 0
    if native:
        assert [p["path"] for p in results["precision"]][:2] == ["reward step (tiny-bert)", "DPO step (tiny-gpt2)"]
        assert results["precision"][2]["path"].startswith("DPO step (")
    else:
        assert results["precision"] == [] and "skipped: bf16: this CPU has no native bf16" in proc.stdout
    assert "| reward-model training | pairs/s |" in proc.stdout
    assert "no-op dvc repro" in proc.stdout


def test_the_benchmark_page_shows_the_committed_results():
    """The benchmark page's results block is the table of the committed bench/results.json
    (`bench/run.py --readme`)."""
    results = json.loads((REPO / "bench" / "results.json").read_text())
    page = PAGE.read_text()
    assert BEGIN in page and results_block(results) in page
