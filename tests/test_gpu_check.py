"""The CUDA check (bench/gpu_check.py) keeps working where CI runs, on a CPU: its plan is dvc.yaml's, its stage
levels are right, and its tiny profile runs every check a CPU can (the ones that need CUDA are listed as skipped).
What it measures on a GPU is in bench/gpu_results.json once a lent GPU has run it; nothing here depends on one."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO, stage_env

sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402


def test_plan_is_dvc_yaml_as_dvc_reads_it():
    """The GPU machine has no DVC: the committed plan must be what DVC makes of dvc.yaml now."""
    committed = json.loads(gpu_check.PLAN.read_text())
    assert committed == gpu_check.make_plan(), "dvc.yaml changed: rerun `python bench/gpu_check.py --plan`"
    assert {"sft", "dpo", "ppo", "online", "merge@dpo", "evaluate@dpo", "report"} <= {s["name"] for s in committed}


def test_levels_put_each_stage_after_the_ones_it_reads():
    plan = [
        {"name": "a", "after": []},
        {"name": "b", "after": []},
        {"name": "c", "after": ["a"]},
        {"name": "d", "after": ["b", "c"]},
        {"name": "e", "after": ["a"]},
    ]
    assert [[s["name"] for s in group] for group in gpu_check.levels(plan)] == [["a", "b"], ["c", "e"], ["d"]]


def test_each_profile_builds_on_the_benchmark_profile_it_names():
    """The check's settings are the benchmark's (bench/config.yaml) plus its own: nothing copied between the files."""
    tiny = gpu_check.load_settings(gpu_check.BENCH / "gpu_check.yaml", "tiny", gpu=False)
    assert tiny["pipeline"]["rows"] == 240 and tiny["pipeline"]["params"]["dpo.epochs"] == 1  # bench tiny's
    assert (tiny["pipeline"]["jobs"], tiny["qlora"]["precision"], tiny["at_scale"]["seq_len"]) == (2, "fp32", 32)
    gpu = gpu_check.load_settings(gpu_check.BENCH / "gpu_check.yaml", "default", gpu=True)
    assert (gpu["at_scale"]["pairs"], gpu["at_scale"]["seq_len"], gpu["at_scale"]["matmul_size"]) == (8, 512, 8192)
    assert (gpu["at_scale"]["repeats"], gpu["pipeline"]["rows"], gpu["pipeline"]["jobs"]) == (3, 600, 4)
    assert gpu["qlora"]["precision"] == "bf16" and gpu["pipeline"]["skip"] == ["report"]


def test_wheels_pin_what_requirements_pin():
    """The carried wheels are the versions the project runs with: every package both files name has one version."""
    pins = lambda text: dict(  # noqa: E731
        line.split("==") for line in (raw.split("#")[0].strip() for raw in text.splitlines()) if "==" in line
    )
    wheels = pins((REPO / "bench/gpu_wheels.txt").read_text())
    required = pins((REPO / "requirements.txt").read_text())
    common = set(wheels) & set(required)
    assert {"transformers", "tokenizers", "trl", "peft", "bitsandbytes", "accelerate", "datasets"} <= common
    assert {name: wheels[name] for name in common} == {name: required[name] for name in common}


def test_the_copy_is_no_dvc_repository():
    """The stages run without DVC there: with .dvc/ in the copy, dvclive would open the DVC repository, whose code
    the carried wheels leave out (a run in a venv of the GPU image's packages failed so, in every training stage)."""
    files = gpu_check.repo_files()
    assert "dvc.yaml" in files and "params.yaml" in files and "bench/gpu_plan.json" in files
    assert not [f for f in files if f.split("/")[0] in {".dvc", ".git", ".whl", ".venv"}]


@pytest.mark.slow
@pytest.mark.same_run_only
def test_tiny_check_runs_every_cpu_check(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--profile", "tiny", "--out", str(out)],
        cwd=REPO,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["failures"] == []
    plan = [s["name"] for s in json.loads(gpu_check.PLAN.read_text())]
    stages = results["pipeline"]["stages"]
    assert sorted(r["name"] for r in stages) == sorted(n for n in plan if n != "report")
    assert all("error" not in r and r["seconds"] > 0 for r in stages)

    # QLoRA: sft and dpo on a 4-bit base with paged AdamW, merged; the merge is exact against the unmerged adapter
    # on the full-precision base, and off the 4-bit model it was trained as by about the base's quantisation alone.
    qlora = results["qlora"]
    assert [r["name"] for r in qlora["stages"]] == ["sft", "dpo", "merge@sft", "merge@dpo"]
    check = qlora["merge_check"]
    assert check["merged_vs_unmerged_max_nats"] < 1e-3
    assert 0 < check["base_vs_4bit_base_max_nats"]
    assert check["merged_vs_4bit_adapter_max_nats"] <= 1.5 * check["base_vs_4bit_base_max_nats"] + 1e-3

    # The two 4-bit paths: ours runs on the CPU; transformers' needs CUDA, and the results say so.
    quant = results["quantization"]
    assert quant["ours_layers"] and 0 < quant["ours_vs_full_max_nats"]
    if not torch.cuda.is_available():
        assert "needs CUDA" in quant["skipped"]
        assert any("fp16" in s for s in results["skipped"])

    # bf16 autocast on the real dpo stage learns as fp32 does on the same data.
    precision = results["precision"]
    assert abs(precision["bf16"]["val_preference_accuracy"] - precision["fp32"]["val_preference_accuracy"]) <= 0.1

    # At scale (toy size here): every loss finite; LoRA and QLoRA train a small share of the parameters.
    runs = results["at_scale"]["runs"]
    assert all(r["losses_finite"] for r in runs.values())
    full, qlora_run = runs["bf16, checkpointing"], runs["bf16, checkpointing, QLoRA"]
    assert full["trainable"] == full["params"] and qlora_run["quantization"] == "nf4"
    assert qlora_run["trainable"] < full["trainable"] / 2
    assert set(results["goals"]) == {"mfu_bf16", "qlora_memory"}
    assert "DPO step at scale, bf16, checkpointing, QLoRA" in proc.stdout


@pytest.mark.slow
def test_a_failing_stage_fails_the_check_and_keeps_its_error(tmp_path):
    """A stage that fails is recorded with its output, the checks that read the pipeline do not run, and the
    check exits 1 with its results written."""
    config = yaml.safe_load((REPO / "bench/gpu_check.yaml").read_text())
    config["tiny"]["pipeline"]["params"] = {"sft.lr": "fast"}  # over the benchmark's tiny params; not a number
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--profile", "tiny", "--config", str(path), "--out", str(out)]
        + ["--sections", "pipeline,qlora"],
        cwd=REPO,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    results = json.loads(out.read_text())
    failed = [r for r in results["pipeline"]["stages"] if "error" in r]
    assert failed and "sft.lr" in failed[0]["error"]
    assert "qlora" not in results and results["failures"][0].startswith("pipeline: failed")
