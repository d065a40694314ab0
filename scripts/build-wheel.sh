#!/usr/bin/env bash
# Builds the maskrate wheel: dist/maskrate-VERSION-cp310-abi3-manylinux_2_28_x86_64.whl (one wheel
# for CPython 3.10+, release build, glibc 2.28 or newer: RHEL/Rocky 8, Ubuntu 20.04, Debian 11 and
# later). maturin links against glibc 2.28 through zig (`--zig`, `ziglang` from PyPI), whatever
# the build machine's glibc, and its auditwheel check refuses a wheel that needs a newer symbol.
# Prints the wheel's path last.
#
#   scripts/build-wheel.sh            # into dist/
#   MASKRATE_WHEEL_NATIVE=1 scripts/build-wheel.sh   # no zig: tagged for this machine's glibc
#
# Tools come from a venv outside the clone (MASKRATE_BUILD_VENV, default
# ~/.cache/maskrate/build-venv); cargo's target directory is ~/.cache/maskrate/py-target.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MASKRATE_BUILD_VENV:-$HOME/.cache/maskrate/build-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install -q --disable-pip-version-check maturin==1.16.0 ziglang==0.15.1 >&2
export PATH="$VENV/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/maskrate/py-target}"
mkdir -p dist
rm -f dist/maskrate-*.whl
if [ "${MASKRATE_WHEEL_NATIVE:-0}" = 1 ]; then
    maturin build --release --strip --locked -m python/Cargo.toml --out dist >&2
else
    maturin build --release --strip --locked -m python/Cargo.toml --zig --compatibility manylinux_2_28 --out dist >&2
fi
ls "$PWD"/dist/maskrate-*.whl
