#!/usr/bin/env bash
# The Python package's tests: a venv outside the clone (~/.cache/maskrate/venv), packages from
# PyPI (pip's cache, ~/.cache/pip, is reused between runs), the package built from ./python by
# maturin as `pip install` does, then pytest. The byte-identity tests call the trainer binary
# built by `cargo test` (target/debug; MASKRATE_BIN_DIR overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MASKRATE_VENV:-$HOME/.cache/maskrate/venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
# Pinned: the versions the package was tested with (torch pulls its CUDA wheels; they are needed
# to import it even on a CPU-only machine).
pip install -q --disable-pip-version-check maturin==1.16.0 numpy pytest torch==2.15.0 \
    transformers==5.23.0 accelerate==1.15.0 torchdata==0.11.0
# The PEP 517 build (maturin, release), in a target directory outside the clone.
CARGO_TARGET_DIR="$HOME/.cache/maskrate/py-target" pip install -q --disable-pip-version-check \
    --no-build-isolation --force-reinstall --no-deps ./python
export MASKRATE_BIN_DIR="${MASKRATE_BIN_DIR:-$PWD/target/debug}"
python -m pytest -q python/tests "$@"
