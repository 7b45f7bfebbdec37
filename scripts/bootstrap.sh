#!/usr/bin/env bash
# Installs what liblora needs on Debian/Ubuntu, only what is missing
# (idempotent). Run as root, or with sudo available.
set -euo pipefail

# Open MPI (openmpi-bin, libopenmpi-dev: `lora train` under mpirun links libmpi) and
# iproute2 (the two-host network-namespace test) are for data-parallel training;
# librsvg2-bin: rsvg-convert renders loss.svg in the CLI tests; clang-format: scripts/check_format.sh;
# chromium: the `lora serve` playground's browser test (Tests/server); time: /usr/bin/time for the
# peak RSS figures of scripts/bench_dtype.sh; libdnnl2: oneDNN, whose sgemm liblora runs where
# it is installed (scripts/test.sh runs the Swift suite a second time with LORA_SGEMM=openblas).
packages=(libopenblas-dev liblapacke-dev libdnnl2 pkg-config fortunes valgrind make gcc g++ python3 openmpi-bin libopenmpi-dev iproute2 librsvg2-bin clang-format chromium time)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || { echo "bootstrap: need root to install: ${missing[*]}" >&2; exit 1; }
        SUDO=sudo
    fi
    echo "bootstrap: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null; then
    for d in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
        [[ -x $d/swift ]] && export PATH="$d:$PATH"
    done
fi
command -v swift >/dev/null || { echo "bootstrap: the Swift toolchain (6.0 or later) is not on PATH" >&2; exit 1; }
pkg-config --exists openblas lapacke || { echo "bootstrap: pkg-config cannot find openblas/lapacke" >&2; exit 1; }
pkg-config --exists ompi-c || { echo "bootstrap: pkg-config cannot find Open MPI (ompi-c)" >&2; exit 1; }

# The Python binding's tests: a venv-capable python3 with pip, pytest and setuptools.
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv python3-pip >/dev/null
fi
if ! python3 -c "import pytest, setuptools" 2>/dev/null; then
    python3 -m pip install --quiet pytest setuptools 2>/dev/null || python3 -m pip install --quiet --break-system-packages pytest setuptools
fi
# The mpi4py example of data-parallel training (python/examples/mpi4py_train.py) and its test.
if ! python3 -c "import mpi4py" 2>/dev/null; then
    python3 -m pip install --quiet mpi4py 2>/dev/null || python3 -m pip install --quiet --break-system-packages mpi4py
fi
# gguf-py: Tests/gguf reads the files `lora export-gguf` writes with llama.cpp's own GGUF package.
if ! python3 -c "import gguf, safetensors, numpy" 2>/dev/null; then
    python3 -m pip install --quiet -r scripts/requirements-gguf.txt 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages -r scripts/requirements-gguf.txt
fi
# The `lora serve` tests (Tests/server): the official openai client, requests,
# schemathesis against openapi.yaml, websocket-client for Chromium's DevTools protocol,
# Pillow to check the playground's screenshot.
if ! python3 -c "import openai, requests, schemathesis, websocket, numpy, PIL" 2>/dev/null; then
    python3 -m pip install --quiet -r "$(dirname "$0")/requirements-serve.txt" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages -r "$(dirname "$0")/requirements-serve.txt"
fi
