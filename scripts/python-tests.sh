#!/usr/bin/env bash
# The Python package's tests, against the wheel (built once by scripts/build-wheel.sh, or
# $MASKRATE_WHEEL): a venv outside the clone (~/.cache/maskrate/venv), test packages from PyPI
# (pip's cache, ~/.cache/pip, is reused between runs), the wheel installed, then pytest. The
# byte-identity tests call the trainer binary built by `cargo test` (target/debug;
# MASKRATE_BIN_DIR overrides).
#
# Skips: pytest runs with -rs (every skip and its reason printed) and MASKRATE_FAIL_ON_SKIP=1: a
# test may skip only for a condition CI never has, with a reason starting "outside CI:"
# (python/tests/conftest.py); any other skip fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MASKRATE_VENV:-$HOME/.cache/maskrate/venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
# Pinned: the versions the package was tested with (torch pulls its CUDA wheels; they are needed
# to import it even on a CPU-only machine).
pip install -q --disable-pip-version-check numpy pytest torch==2.15.0 transformers==5.23.0 \
    accelerate==1.15.0 torchdata==0.11.0
WHEEL="$(realpath "${MASKRATE_WHEEL:-$(scripts/build-wheel.sh | tail -1)}")"
pip install -q --disable-pip-version-check --no-deps --force-reinstall "$WHEEL"
export MASKRATE_WHEEL="$WHEEL" MASKRATE_FAIL_ON_SKIP=1
export MASKRATE_BIN_DIR="${MASKRATE_BIN_DIR:-$PWD/target/debug}"
# Run from outside the checkout so `import maskrate` is the installed wheel, not python/py_src.
cd python/tests && python -m pytest -q -rs -p no:cacheprovider . "$@"
