#!/usr/bin/env bash
# Download the wheels bench/gpu_wheels.txt lists into .whl/ (git-ignored through .git/info/exclude), for the GPU
# machine's Python 3.12 on x86-64, so that a device run can install them without a network:
#
#   bench/gpu_wheels.sh        # here, where the package index is reachable; prints the total size
#
# PYTHON_VERSION (3.12) and WHL (.whl) change the Python they are for and the folder, to try the set here first:
# a venv with the GPU image's packages and this CPU's torch, then the same install and check as on the device.
#
# bitsandbytes' wheel holds a library for every CUDA, ROCm and XPU version (43 MB); the copy made here keeps the
# CPU one and those for CUDA 13 (the GPU image's torch is built for 13.0), which brings the working tree and the
# wheels under the device tool's 64 MiB. rouge_score has only a source release: it is built into a wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON_VERSION:-3.12}
whl=${WHL:-.whl}
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf "$whl" && mkdir -p "$whl"
pins=$(grep -v '^#' bench/gpu_wheels.txt | grep -v '^rouge_score' | grep .)
platforms=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
         manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${p}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}" \
  -d "$whl" $pins
python3 -m pip wheel -q --no-deps -w "$whl" "$(grep '^rouge_score' bench/gpu_wheels.txt)"
# bitsandbytes, slimmed: the same wheel without the other platforms' libraries, and without their RECORD lines.
python3 - "$whl"/bitsandbytes-*.whl <<'PY'
import re, sys, zipfile
from pathlib import Path
path = Path(sys.argv[1])
keep = lambda name: not re.search(r"libbitsandbytes_(?!cpu\.so$|cuda13\d*\.so$)[^/]*$", name)
slim = path.with_suffix(".slim")
with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if not keep(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(l for l in data.decode().splitlines(True) if keep(l.split(",")[0])).encode()
        dst.writestr(info, data)
slim.replace(path)
PY
echo "$(ls "$whl" | wc -l) wheels, $(du -sh "$whl" | cut -f1) in $whl/"
