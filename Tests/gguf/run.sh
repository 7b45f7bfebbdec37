#!/usr/bin/env bash
# `lora export-gguf` against the real GGUF tools (Tests/gguf/test_gguf.py):
# the files read back with gguf-py, every tensor and key checked.
#   Tests/gguf/run.sh [path to lora-cli]
# LORA_TEST_LLAMA_CPP=1 also runs them in llama.cpp (llama-cpp-python, built
# once by scripts/llama_cpp.sh; slow the first time) against liblora through
# the Python binding (LORA_LIBRARY, default: .build/debug/liblora.so).
set -euo pipefail
cd "$(dirname "$0")/../.."
export LORA_CLI=$(realpath "${1:-.build/release/lora-cli}")
python3 -c "import gguf, safetensors, numpy, pytest" \
    || { echo "gguf test: needs gguf, safetensors, numpy, pytest (scripts/bootstrap.sh installs them)" >&2; exit 1; }
args=(-q)
if [[ ${LORA_TEST_LLAMA_CPP:-0} == 1 ]]; then
    bash scripts/llama_cpp.sh
    if [[ -z ${LORA_LIBRARY:-} ]]; then
        export PATH="/opt/swift/usr/bin:$PATH"
        swift build --product lora
        bash scripts/link_soname.sh .build/debug
        LORA_LIBRARY=$PWD/.build/debug/liblora.so
    fi
    export LORA_LIBRARY PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
    args=(-q -s)  # print the measured max |Δlogit| of each llama.cpp comparison
fi
python3 -m pytest "${args[@]}" Tests/gguf
