#!/usr/bin/env bash
# Runs the Python binding's tests against a built liblora.so.
#
#   python/run_tests.sh [pytest args or test paths...]
#
# - LORA_LIBRARY: the library to test (default: the newest of
#   .build/release/liblora.so and .build/debug/liblora.so; built with
#   `swift build --product lora` when neither exists).
# - The package is installed with pip into a temporary venv that sees the
#   system site-packages (pytest, and numpy/torch/transformers when present),
#   so the test exercises `pip install ./python` too.
# - pytest runs twice: with numpy (when installed) and with numpy hidden
#   (LORA_TEST_NO_NUMPY=1), the pure-Python paths. Exits non-zero on failure.
set -euo pipefail
PYTHON_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$PYTHON_DIR/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if [[ -z "${LORA_LIBRARY:-}" ]]; then
    newest=""
    for lib in "$REPO/.build/release/liblora.so" "$REPO/.build/debug/liblora.so"; do
        if [[ -e "$lib" && ( -z "$newest" || "$lib" -nt "$newest" ) ]]; then newest="$lib"; fi
    done
    if [[ -z "$newest" ]]; then
        echo "== no liblora.so yet: swift build --product lora"
        export PATH="/opt/swift/usr/bin:$PATH"
        (cd "$REPO" && swift build --product lora)
        newest="$REPO/.build/debug/liblora.so"
    fi
    LORA_LIBRARY="$newest"
fi
export LORA_LIBRARY="$(cd "$(dirname "$LORA_LIBRARY")" && pwd)/$(basename "$LORA_LIBRARY")"
echo "== LORA_LIBRARY=$LORA_LIBRARY"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# Without its own pip/setuptools the venv builds with the system's setuptools;
# no network: setuptools and pytest come from the system site-packages.
"$PYTHON" -m venv --without-pip --system-site-packages "$TMP/venv"
VPY="$TMP/venv/bin/python"
# Installed from a copy so the build leaves nothing (build/, *.egg-info) in the source tree.
mkdir "$TMP/src"
cp -r "$PYTHON_DIR/pyproject.toml" "$PYTHON_DIR/setup.py" "$PYTHON_DIR/README.md" "$PYTHON_DIR/lora" "$TMP/src/"
"$PYTHON" -m pip --python "$VPY" install --quiet --no-build-isolation --no-deps --no-index "$TMP/src"
"$VPY" -c "import pytest" 2>/dev/null || { echo "pytest is not installed for $PYTHON" >&2; exit 2; }

# Test paths given as arguments (relative to the caller's directory) replace python/tests.
args=()
paths=()
for a in "$@"; do
    file="${a%%::*}"
    if [[ "$a" != -* && -e "$file" ]]; then
        paths+=("$(cd "$(dirname "$file")" && pwd)/$(basename "$file")${a#"$file"}")
    else
        args+=("$a")
    fi
done
[[ ${#paths[@]} -gt 0 ]] || paths=("$PYTHON_DIR/tests")

# Run from an empty directory so `import lora` is the installed package, not the source tree.
mkdir "$TMP/run"
cd "$TMP/run"
status=0
if "$VPY" -c "import numpy" 2>/dev/null; then
    echo "== pytest (numpy installed)"
    "$VPY" -m pytest -p no:cacheprovider --rootdir "$PYTHON_DIR" -c "$PYTHON_DIR/pyproject.toml" \
        "${paths[@]}" ${args[@]+"${args[@]}"} || status=$?
fi
echo "== pytest (numpy hidden: LORA_TEST_NO_NUMPY=1)"
LORA_TEST_NO_NUMPY=1 "$VPY" -m pytest -p no:cacheprovider --rootdir "$PYTHON_DIR" -c "$PYTHON_DIR/pyproject.toml" \
    "${paths[@]}" ${args[@]+"${args[@]}"} || status=$?
exit $status
