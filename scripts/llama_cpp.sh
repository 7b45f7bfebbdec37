#!/usr/bin/env bash
# Installs llama-cpp-python, the real llama.cpp that Tests/gguf runs the
# exported GGUF files in (LORA_TEST_LLAMA_CPP=1 Tests/gguf/run.sh). Its PyPI
# source distribution builds llama.cpp with CMake: ~5 min on 2 idle cores,
# 25+ min on a busy machine, so the wheel is built once, niced, and kept in
# $LORA_LLAMA_CPP_WHEELS (default ~/.cache/liblora/wheels); later runs and
# fresh virtual environments install it from there in seconds.
set -euo pipefail
version=0.3.36
wheels=${LORA_LLAMA_CPP_WHEELS:-$HOME/.cache/liblora/wheels}
PYTHON=${PYTHON:-python3}
if "$PYTHON" -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
    exit 0
fi
mkdir -p "$wheels"
if ! compgen -G "$wheels/llama_cpp_python-$version-*.whl" >/dev/null; then
    echo "llama_cpp.sh: building llama-cpp-python $version (llama.cpp from source) into $wheels"
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} nice -n 19 \
        "$PYTHON" -m pip wheel --quiet --no-deps "llama-cpp-python==$version" -w "$wheels"
fi
# The wheel from the cache; its small pure-Python dependencies from the index.
"$PYTHON" -m pip install --quiet --find-links "$wheels" "llama-cpp-python==$version" 2>/dev/null \
    || "$PYTHON" -m pip install --quiet --break-system-packages --find-links "$wheels" "llama-cpp-python==$version"
