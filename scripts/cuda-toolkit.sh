#!/usr/bin/env bash
# Installs a CUDA 13 toolkit from PyPI wheels (no GPU, no root, no NVIDIA apt repository needed)
# into $MASKRATE_CUDA (default ~/.cache/maskrate/cuda13), enough to *compile* maskrate's
# `cuda`/`nccl` features anywhere: nvcc and headers, the runtime libraries candle links, NCCL, and
# a stub libcuda.so (the driver library only exists where an NVIDIA driver is installed; the stub
# answers every call with CUDA_ERROR_STUB_LIBRARY). Idempotent: a second run only prints the
# environment to use.
#
#   eval "$(scripts/cuda-toolkit.sh)"      # sets CUDA_HOME, PATH, LD_LIBRARY_PATH, CUDA_COMPUTE_CAP
#   cargo build --release -p trainer --features nccl
set -euo pipefail
root="${MASKRATE_CUDA:-$HOME/.cache/maskrate/cuda13}"
venv="$root/venv"
if [ ! -f "$root/.done" ]; then
    mkdir -p "$root"
    python3 -m venv "$venv" >&2
    # nvvm pinned: 13.5 would come in, and cudarc 0.19.10 knows CUDA versions up to 13.4.
    "$venv/bin/pip" install -q \
        "cuda-toolkit[nvcc,cudart,crt,cccl,cublas,curand,nvrtc]==13.0.2" nvidia-nvvm==13.0.88 \
        "nvidia-nccl-cu13" >&2
    cu=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
    nccl=$(echo "$venv"/lib/python3*/site-packages/nvidia/nccl)
    # The wheels ship versioned libraries only; the linker wants the plain names.
    for lib in cublas cublasLt cudart curand nvrtc; do
        f=$(ls "$cu/lib/lib$lib.so."* | sort | head -1)
        ln -sf "$(basename "$f")" "$cu/lib/lib$lib.so"
    done
    f=$(ls "$nccl/lib/libnccl.so."* | sort | head -1)
    ln -sf "$f" "$cu/lib/libnccl.so"
    ln -sf "$f" "$cu/lib/$(basename "$f")"
    cp "$nccl/include/"nccl*.h "$cu/include/"
    # A stub driver: every cu* entry point cudarc declares returns CUDA_ERROR_STUB_LIBRARY (34).
    python3 - "$cu" <<'PY'
import re, sys, pathlib
cu = pathlib.Path(sys.argv[1])
header = (cu / "include" / "cuda.h").read_text(errors="replace")
# Every driver entry point the header names, including the versioned targets of its
# `#define cuMemAlloc cuMemAlloc_v2` lines (the objects reference those).
names = sorted(set(re.findall(r"\b(cu[A-Z][A-Za-z0-9_]*)\b", header)))
src = "".join(f"int {n}(void) {{ return 34; }}\n" for n in names)
(cu / "lib" / "stub_libcuda.c").write_text(src)
PY
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/libcuda.so" "$cu/lib/stub_libcuda.c" 2>/dev/null
    ln -sf libcuda.so "$cu/lib/libcuda.so.1"
    touch "$root/.done"
fi
cu=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
echo "export CUDA_HOME='$cu' CUDA_PATH='$cu' PATH='$cu/bin':\"\$PATH\" LD_LIBRARY_PATH='$cu/lib':\"\${LD_LIBRARY_PATH:-}\" NCCL_INCLUDE_DIR='$cu/include' CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
