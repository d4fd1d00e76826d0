"""Checkpoints that let a killed training stage resume where it left off.

Each training stage keeps one checkpoint directory, a DVC output marked
`persist: true` (DVC leaves it in place when it reruns the stage):

    checkpoints/<stage>/
        checkpoint.json     step, fingerprint, complete (a finished run: step and complete only), the
                            sha256 of every other file, and the sha256 of its own other fields
        model.safetensors   the model's weights (for PPO, with the value head); with a LoRA adapter,
                            only the trainable ones (the adapter and value head, not the base)
        state.pt            optimizer, scheduler, RNG states, data position and running
                            sums; plain tensors and containers, loaded with weights_only=True
        live/               the stage's dvclive directory as it was at that step

It is written every `<stage>.checkpoint_every` optimizer steps, into a temporary
directory swapped with the previous one (io.replace), so a kill never leaves half a
checkpoint. A stage resumes only from a checkpoint whose fingerprint (a hash of the
params and input files that determine the run) matches its own and that is not
marked complete; anything else is discarded and the stage starts from step 0. Before
it resumes, every file is checked against the sha256 in checkpoint.json: a damaged
checkpoint is refused with one line naming the file, never loaded. When the stage
has written its final outputs it calls complete(): the weights and state are deleted
and checkpoint.json is marked complete, so the next run (after a change, or a forced
rerun) starts afresh; until then a kill or a full disk loses nothing.
"""

import hashlib
import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alignkit.errors import TrainingError, refused_pickle
from alignkit.io import atomic_dir, file_digest
from alignkit.stage import set_resume_point

INFO, WEIGHTS, STATE, LIVE = "checkpoint.json", "model.safetensors", "state.pt", "live"


def sealed(info):
    """`info` with the sha256 of its canonical JSON added: checkpoint.json checks itself."""
    return {**info, "sha256": hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()}


def fingerprint(*parts, paths=()):
    """sha256 over JSON-able parts and the bytes of every file under `paths` (in a fixed order)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode())
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def rng_state():
    """Python, NumPy and torch (CPU and CUDA) RNG states, as tensors and plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_weights(model):
    """The weights that define a trained model, by module path: every parameter and buffer, or, when part of
    the model is frozen (a LoRA adapter on a base, trl's value head on one), only the trainable parameters --
    a checkpoint then holds the adapter, not the base. nn.Module's own state_dict, not a wrapper's override
    (trl's value-head model renames keys); tied tensors are copied apart, as safetensors stores no shared memory."""
    state = nn.Module.state_dict(model)
    return {k: state[k].detach().cpu().clone().contiguous() for k in model_weights_keys(model)}


def load_weights(model, weights):
    """Copy model_weights(...) back into `model`; ValueError unless they are exactly its trainable part."""
    expected = set(model_weights_keys(model))
    if set(weights) != expected:
        extra, missing = sorted(set(weights) - expected), sorted(expected - set(weights))
        raise ValueError(f"the weights do not fit this model (unexpected: {extra[:3]}, missing: {missing[:3]})")
    nn.Module.load_state_dict(model, weights, strict=False)


def model_weights_keys(model):
    """The names model_weights keeps."""
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return list(nn.Module.state_dict(model))
    return [k for k, v in params.items() if v.requires_grad]


class Checkpointer:
    """Save and restore one stage's training state. Only the main process writes."""

    def __init__(self, directory, every, fingerprint, accelerator):
        self.dir, self.every, self.fingerprint = Path(directory), every, fingerprint
        self.accelerator = accelerator
        self.step = None  # the step of the last checkpoint written or read (and verified)
        self.final_step = None

    def due(self, step):
        return self.every > 0 and step % self.every == 0

    def load(self, model):
        """The saved state, with the weights already copied into `model`, or None to start afresh. A checkpoint
        of this run whose files do not match their recorded sha256 is a TrainingError naming the file."""
        info = self._info()
        if info is None or info.get("complete") or info.get("fingerprint") != self.fingerprint:
            return None
        self._verify(info)
        from safetensors.torch import load_file

        try:
            state = torch.load(self.dir / STATE, map_location="cpu", weights_only=True)
            load_weights(model, load_file(self.dir / WEIGHTS))
        except pickle.UnpicklingError as err:  # torch's message would suggest weights_only=False: ours instead
            raise TrainingError(
                f"{self.dir / STATE}: refused to load: {refused_pickle(err)}; not resumed: "
                f"delete {self.dir} to start afresh"
            ) from None
        except Exception as err:  # any unreadable or mismatching checkpoint: name it, never guess
            raise TrainingError(
                f"{self.dir}: cannot resume from this checkpoint "
                f"({type(err).__name__}: {str(err).splitlines()[0]}); delete it to start afresh"
            ) from None
        self.step = info["step"]
        return state

    def restore_live(self, live_dir):
        """Put the dvclive directory back as it was at the checkpoint's step."""
        if self.accelerator.is_main_process:
            shutil.rmtree(live_dir, ignore_errors=True)
            if (self.dir / LIVE).is_dir():
                shutil.copytree(self.dir / LIVE, live_dir)

    def save(self, step, model, state, live_dir):
        """Write the checkpoint of `step`: model weights, `state` (tensors and containers), dvclive files."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            from safetensors.torch import save_file

            with atomic_dir(self.dir) as tmp:
                save_file(model_weights(model), tmp / WEIGHTS)
                with open(tmp / STATE, "wb") as f:
                    torch.save(state, f)
                if Path(live_dir).is_dir():
                    shutil.copytree(live_dir, tmp / LIVE)
                files = {p.relative_to(tmp).as_posix(): file_digest(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
                (tmp / INFO).write_text(
                    json.dumps(
                        sealed({"step": step, "fingerprint": self.fingerprint, "complete": False, "files": files})
                    )
                    + "\n"
                )
        self.step = step
        self.accelerator.wait_for_everyone()

    def finished(self, step):
        """The training loop has run its last step (`step`); complete() marks it once the outputs are written."""
        self.final_step = step

    def complete(self):
        """Mark the run finished, after the stage has written its final outputs (all processes call it): only
        checkpoint.json stays (so the DVC output exists). It holds no fingerprint, so its bytes, which dvc.lock
        records, do not change with unrelated code."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            with atomic_dir(self.dir) as tmp:
                (tmp / INFO).write_text(json.dumps(sealed({"step": self.final_step, "complete": True})) + "\n")

    def describe(self):
        return f"step {self.step} in {self.dir}" if self.step is not None else f"none written to {self.dir}"

    def _info(self):
        """checkpoint.json, checked against its own sha256; None where there is none. One written before
        checkpoints were checksummed (exactly the old keys, no sha256) counts as none: its run cannot match."""
        path = self.dir / INFO
        if not path.exists():
            return None
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            assert isinstance(info, dict)
        except (OSError, ValueError, AssertionError) as err:
            raise TrainingError(
                f"{path}: damaged ({type(err).__name__}); not resumed: delete {self.dir} to start afresh"
            ) from None
        if "sha256" not in info and set(info) <= {"step", "fingerprint", "complete"}:
            return None
        rest = {k: v for k, v in info.items() if k != "sha256"}
        if sealed(rest).get("sha256") != info.get("sha256"):
            raise TrainingError(
                f"{path}: damaged (its contents do not match its sha256); not resumed: "
                f"delete {self.dir} to start afresh"
            )
        return info

    def _verify(self, info):
        """Every file the checkpoint of `info` recorded is there with its sha256."""
        files = info.get("files")
        if not isinstance(files, dict) or not files:
            raise TrainingError(
                f"{self.dir / INFO}: damaged (no file checksums); not resumed: delete {self.dir} to start afresh"
            )
        for name, expected in files.items():
            path = self.dir / name
            actual = file_digest(path) if path.is_file() else None
            if actual != expected:
                what = "missing" if actual is None else "its sha256 differs from the one recorded when it was written"
                raise TrainingError(
                    f"{path}: damaged ({what}; the checkpoint of step {info.get('step')}); "
                    f"not resumed: delete {self.dir} to start afresh"
                )


def stage_checkpointer(directory, stage, params, accelerator, inputs=(), cfg=None, extra=None):
    """The Checkpointer of a training stage. Its fingerprint covers the seed, the stage's params
    section (all but checkpoint_every, which changes nothing about the result; cfg: that section when
    it is not params.<stage>, as for one reward model), `extra` (any other params it reads), the model specs,
    the library code, and `inputs` (the stage script and its input files), so only a run of
    the same computation on the same inputs resumes."""
    cfg = cfg or getattr(params, stage)
    code = sorted(Path(__file__).resolve().parent.glob("*.py"))
    parts = (stage, params.seed, params.models.model_dump(), cfg.model_dump(exclude={"checkpoint_every"}), extra)
    checkpointer = Checkpointer(
        directory, cfg.checkpoint_every, fingerprint(*parts, paths=[*code, *inputs]), accelerator
    )
    set_resume_point(checkpointer)  # a stop names the step a rerun resumes from
    return checkpointer
