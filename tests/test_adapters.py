"""LoRA adapters and 4-bit bases: params, the two-step merge, DPO's adapter-off reference, QLoRA on the CPU,
the bitsandbytes optimizers, and resume after a kill of a LoRA stage."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from alignkit import adapters
from alignkit.errors import ParamsError
from alignkit.modeldir import has_adapter, load_policy, save_policy
from alignkit.params import load_params
from alignkit.policy import collate, forward_logps, prepare_tokenizer
from alignkit.training import choose_optimizer
from tests.conftest import REPO, repo_params, stage_env, write_params

TEXTS = [f"Question: what is {i} plus {i}?\nAnswer: it is {2 * i}." for i in range(60)]
LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def stage_cfg(stage="dpo", **lora):
    """A stage's params section from params.yaml with LoRA on (and `lora` keys replaced)."""
    params = repo_params()
    section = params[stage]
    section["lora"] = {**section["lora"], "enabled": True, **lora}
    quantization = section["lora"].pop("quantization", "none")
    section["quantization"] = quantization
    return section


def cfg_of(tmp_path, stage="dpo", **lora):
    return getattr(load_params(write_params(tmp_path / "params.yaml", **{stage: stage_cfg(stage, **lora)})), stage)


def randomise_adapter(model, seed):
    """LoRA's B starts at zero (the adapter is a no-op); give every adapter weight a value so merging shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def batch(tokenizer):
    ids = [tokenizer(t)["input_ids"] for t in TEXTS[:4]]
    return collate([(i, 3) for i in ids], tokenizer.pad_token_id)


def logits(model, b):
    model.eval()
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def test_quantization_without_an_adapter_and_unknown_targets_are_params_errors(tmp_path):
    params = repo_params()
    params["dpo"]["quantization"] = "nf4"
    with pytest.raises(ParamsError, match=r"dpo.quantization: 'nf4' freezes the base in 4 bits.*dpo.lora.enabled"):
        load_params(write_params(tmp_path / "params.yaml", dpo=params["dpo"]))
    model, _ = load_policy("tiny-llama", texts=TEXTS, seed=0)
    cfg = cfg_of(tmp_path, target_modules=["c_attn"])  # GPT-2's name, not Llama's
    with pytest.raises(ParamsError, match=r"^dpo.lora.target_modules: .*c_attn"):
        adapters.prepare(model, cfg, "dpo", "cpu")


def test_an_adapter_trains_only_its_own_weights_and_saves_without_the_base(tmp_path):
    """r=64 on the seven projections of every layer, as the book: only lora_A/lora_B train; the saved directory
    holds the adapter (and, for a preset built in memory, its base under base/), never a whole model."""
    model, tokenizer = load_policy("tiny-llama", texts=TEXTS, seed=0)
    prepare_tokenizer(tokenizer)
    cfg = cfg_of(tmp_path, "sft", r=64, alpha=32, dropout=0.1, target_modules=LLAMA_MODULES)
    peft_model = adapters.prepare(model, cfg, "sft", "cpu")
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # A and B, seven projections, two layers
    layer = peft_model.base_model.model.model.layers[0]
    assert layer.mlp.down_proj.r["default"] == 64 and layer.mlp.down_proj.scaling["default"] == 0.5  # alpha / r
    save_policy(peft_model, tokenizer, tmp_path / "sft")
    files = {p.name for p in (tmp_path / "sft").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "base"} <= files
    assert "model.safetensors" not in files
    assert json.loads((tmp_path / "sft" / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"


def test_the_two_step_merge_gives_the_adapter_models_logits(tmp_path):
    """Base + SFT adapter, merged; + DPO adapter on that, merged: the plain model that load_policy (and the merge
    stage) returns computes the same logits as the models with their adapters unmerged, within 1e-4 in fp32."""
    torch.manual_seed(0)
    base, tokenizer = load_policy("tiny-llama", texts=TEXTS, seed=0)
    prepare_tokenizer(tokenizer)
    b = batch(tokenizer)
    sft = randomise_adapter(adapters.prepare(base, cfg_of(tmp_path, "sft"), "sft", "cpu"), seed=1)
    sft_logits = logits(sft, b)
    save_policy(sft, tokenizer, tmp_path / "sft")

    merged_sft, _ = load_policy(str(tmp_path / "sft"))
    assert not has_adapter(merged_sft) and not any("lora" in n for n, _ in merged_sft.named_parameters())
    assert (logits(merged_sft, b) - sft_logits).abs().max() < 1e-4

    dpo = randomise_adapter(adapters.prepare(merged_sft, cfg_of(tmp_path, "dpo", r=8), "dpo", "cpu"), seed=2)
    dpo_logits = logits(dpo, b)
    assert (dpo_logits - sft_logits).abs().max() > 1e-2  # the second adapter changes the model
    save_policy(dpo, tokenizer, tmp_path / "dpo")
    assert json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tmp_path / "sft"
    )

    merged, merged_tokenizer = load_policy(str(tmp_path / "dpo"))
    assert (logits(merged, b) - dpo_logits).abs().max() < 1e-4
    assert merged_tokenizer.chat_template == tokenizer.chat_template
    # The merge stage writes it as a plain model: it loads with transformers alone, with the same logits.
    from transformers import AutoModelForCausalLM

    from tests.conftest import stage_main

    stage_main("merge")(["--model", str(tmp_path / "dpo"), "--out", str(tmp_path / "merged")])
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
    assert (logits(plain, b) - dpo_logits).abs().max() < 1e-4


def test_the_dpo_reference_is_the_policy_with_its_adapter_off(tmp_path):
    """No second model: inside frozen_reference the policy computes the base's log-probs exactly, and after it
    the adapter is back on."""
    base, tokenizer = load_policy("tiny-llama", texts=TEXTS, seed=0)
    prepare_tokenizer(tokenizer)
    b = batch(tokenizer)
    plain = forward_logps(base.eval(), b).detach()
    policy = randomise_adapter(adapters.prepare(base, cfg_of(tmp_path), "dpo", "cpu"), seed=3)
    loaded = []
    with adapters.frozen_reference(policy, lambda: loaded.append(1), "cpu") as reference:
        assert reference is policy
        with torch.no_grad():
            assert torch.equal(forward_logps(reference, b), plain)
    assert not loaded
    with torch.no_grad():
        assert (forward_logps(policy, b) - plain).abs().max() > 1e-3


def test_qlora_runs_on_this_cpu_with_a_4bit_base(tmp_path):
    """nf4 with double quantisation through bitsandbytes' own Linear4bit: every linear layer but the output is
    4-bit (a quarter of a byte per weight, plus its scales), peft wraps them with its bitsandbytes LoRA layer, a
    training step changes only the adapter, and the logits stay close to the full-precision model's."""
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    base, tokenizer = load_policy("tiny-llama", texts=TEXTS, seed=0)
    prepare_tokenizer(tokenizer)
    b = batch(tokenizer)
    full = logits(base, b)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    cfg = cfg_of(tmp_path, "dpo", quantization="nf4", target_modules=LLAMA_MODULES)
    model = adapters.prepare(base, cfg, "dpo", "cpu")
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    assert isinstance(layer, LoraLinear4bit) and isinstance(layer.base_layer, bnb.nn.Linear4bit)
    state = layer.base_layer.weight.quant_state
    assert (state.quant_type, state.nested) == ("nf4", True)
    assert layer.base_layer.weight.numel() == 128 * 352 // 2  # two 4-bit weights a byte
    assert not isinstance(model.base_model.model.lm_head, bnb.nn.Linear4bit)
    quantised = logits(model, b)
    assert (quantised - full).abs().max() < 0.25 * full.abs().max()  # nf4 rounding, not a different model

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["input_ids"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert (logits(model, b) - quantised).abs().max() > 1e-3
    checked = 0
    for name, p in model.named_parameters():
        if not p.requires_grad and p.dtype == torch.float32 and name.replace("base_model.model.", "") in frozen:
            assert torch.equal(p, frozen[name.replace("base_model.model.", "")]), name
            checked += 1
    assert checked >= 5  # embeddings, norms and lm_head were compared, not skipped by a name that never matched


@pytest.mark.parametrize("name", ["paged_adamw_32bit", "adamw_8bit"])
def test_bitsandbytes_optimizers_step_here(name):
    """The book's paged 32-bit AdamW and 8-bit AdamW run on this CPU (bitsandbytes 0.50's CPU backend)."""
    weight = torch.nn.Parameter(torch.ones(4096))
    optimizer = choose_optimizer([weight], SimpleNamespace(optimizer=name, lr=0.1, weight_decay=0.0), "dpo.optimizer")
    weight.grad = torch.ones(4096)
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((4096,), 0.9), atol=1e-3)  # Adam's first step: lr x sign


def test_an_optimizer_that_cannot_load_is_a_one_line_params_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as where it is not installed
    with pytest.raises(ParamsError, match=r"^sft.optimizer: needs bitsandbytes, which cannot load here \(") as err:
        choose_optimizer(
            [torch.nn.Parameter(torch.ones(2))],
            SimpleNamespace(optimizer="adamw_8bit", lr=0.1, weight_decay=0.0),
            "sft.optimizer",
        )
    assert "\n" not in str(err.value)


def run_dpo(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "dpo.py"), *args],
        env=stage_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.same_run_only
def test_a_killed_lora_stage_resumes_to_the_same_adapter_bytes(prepared_root, sft_model, tmp_path):
    """DPO with LoRA, SIGKILLed after a checkpoint, then run again: the checkpoint holds the adapter
    and optimizer state (not the base), and the final adapter is byte for byte the uninterrupted run's."""
    dpo = {**repo_params()["dpo"], "data": ["helpful"], "batch_size": 4, "max_steps": 12, "checkpoint_every": 4}
    dpo["lora"] = {**dpo["lora"], "enabled": True, "r": 4}
    params = write_params(tmp_path / "params.yaml", dpo=dpo)

    def args(name):
        out = tmp_path / name
        return [
            "--params",
            str(params),
            "--data",
            str(prepared_root),
            "--sft",
            str(sft_model / "sft"),
            "--out",
            str(out / "dpo"),
            "--metrics",
            str(out / "dpo.json"),
            "--live",
            str(out / "live"),
            "--checkpoints",
            str(out / "checkpoints"),
        ]

    whole = run_dpo(args("whole"))
    assert whole.wait() == 0, whole.stdout.read().decode()

    proc = run_dpo(args("killed"), start_new_session=True)
    info = tmp_path / "killed" / "checkpoints" / "checkpoint.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(info.read_text())["step"] >= 4:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "dpo finished before a checkpoint could be caught"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from safetensors.torch import load_file

    held = load_file(tmp_path / "killed" / "checkpoints" / "model.safetensors")
    assert held and all("lora_" in k for k in held)  # the adapter, not the base
    assert not (tmp_path / "killed" / "dpo").exists()

    resumed = run_dpo(args("killed"))
    printed = resumed.communicate()[0].decode()
    assert resumed.returncode == 0 and "resumed from checkpoint at step" in printed, printed
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "killed" / "dpo" / name).read_bytes() == (tmp_path / "whole" / "dpo" / name).read_bytes()
    assert (tmp_path / "killed" / "dpo.json").read_bytes() == (tmp_path / "whole" / "dpo.json").read_bytes()
