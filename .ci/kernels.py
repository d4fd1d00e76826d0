"""CI's second CPU-kernel setting: what another kind of CPU would compute.

torch picks its floating-point kernels per CPU: ATen's vector level (AVX-512, AVX2, none), MKL's code path
and oneDNN's ISA. A machine of another kind computes the last bits of every trained model differently, so CI
runs the suite a second time with all three held one level below this machine's own. A test that compares
against bytes or exact metrics made elsewhere then fails here first.

    python .ci/kernels.py env     # shell exports of the other setting: eval "$(python .ci/kernels.py env)"
    python .ci/kernels.py check   # fail unless the setting changes a trained model's bytes on this machine
"""

import json
import os
import subprocess
import sys

VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")

# This machine's ATen level -> the settings of a CPU one level below it.
ONE_LEVEL_BELOW = {
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "AVX2": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX", "ONEDNN_MAX_CPU_ISA": "AVX"},
}

# A few AdamW steps of a small GPT-2 on fixed tokens: LayerNorm, GELU, softmax, matmuls, the optimizer.
TRAIN = """
import hashlib, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=2, n_head=4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(0, 512, (8, 64))
for _ in range(3):
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
digest = hashlib.sha256()
for tensor in model.state_dict().values():
    digest.update(tensor.detach().numpy().tobytes())
print(torch.backends.cpu.get_cpu_capability(), digest.hexdigest())
"""


def run(code, settings):
    """Run `code` in a fresh interpreter with this machine's defaults plus `settings`; return its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | settings
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def other_setting():
    native = run("import torch; print(torch.backends.cpu.get_cpu_capability())", {}).strip()
    if native not in ONE_LEVEL_BELOW:
        sys.exit(f"error: no kernel setting below this CPU's ATen level {native!r}")
    return native, ONE_LEVEL_BELOW[native]


def main(command):
    native, setting = other_setting()
    if command == "env":
        print("\n".join(f"export {k}={v}" for k, v in setting.items()))
    elif command == "check":
        default, other = run(TRAIN, {}).split(), run(TRAIN, setting).split()
        print(
            f"kernels: this machine {default[0]}, model {default[1][:12]}; with {json.dumps(setting)}: "
            f"{other[0]}, model {other[1][:12]}"
        )
        if default[0] == other[0] or default[1] == other[1]:
            sys.exit(
                "error: the second kernel setting does not change the trained bytes here; "
                "the second test run would prove nothing"
            )
    else:
        sys.exit(f"usage: python {sys.argv[0]} env|check")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) == 2 else "")
