"""Run a stage script as `python SCRIPT ARGS...` would, then record its peak GPU memory.

    python bench/stage_memory.py OUT_JSON SCRIPT [ARGS...]

OUT_JSON gets torch.cuda.max_memory_allocated() in MiB when the stage ends, or null
where there is no GPU or the stage never imported torch (the caller reads the
process's peak RSS as well).
"""

import json
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    out, script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        torch = sys.modules.get("torch")
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch and torch.cuda.is_available() else None
        Path(out).write_text(json.dumps({"gpu_peak_mib": peak}))
