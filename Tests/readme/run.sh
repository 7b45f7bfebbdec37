#!/usr/bin/env bash
# Runs the README's C and Python snippets verbatim (extracted from README.md,
# so they cannot drift) in a scratch folder outside the checkout:
# - C: the ```c block as mine.c, built as the README says from the build
#   folder (-Iinclude -L.build/release -llora -Wl,-rpath) and, when
#   `pkg-config lora` works (after scripts/install.sh), with pkg-config; run.
# - Python: a fresh venv (system site-packages for numpy/pytest, no network),
#   `pip install ./python` with LORA_LIBRARY unset (the package must carry
#   the library), the ```python block run from the scratch folder.
# The Swift snippet is run by scripts/check_swift_dependency.sh, in a package
# that depends on a tagged clone as the README tells Swift users to.
# The scratch folder holds models/ -> the checkout's models (the snippets use
# the relative path models/fortunes-gpt2). Needs .build/release/liblora.so
# and its SONAME link (scripts/link_soname.sh .build/release).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export PATH="/opt/swift/usr/bin:$PATH"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/liblora-readme.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
ln -s "$ROOT/models" models

# snippet LANG: the first ```LANG block of README.md.
snippet() {
    awk -v lang="$1" '$0 == "```" lang { on = 1; next } on && $0 == "```" { exit } on { print }' "$ROOT/README.md"
}
fail=0
stage() { echo "== readme: $1"; }

stage "C snippet, built as the README says from the build folder"
snippet c >mine.c
[[ -s mine.c ]] || { echo "no C snippet in README.md" >&2; exit 1; }
cmd=$(grep -E '^cc mine\.c -Iinclude' "$ROOT/README.md" | sed 's/ *#.*$//')
[[ -n $cmd ]] || { echo "no build-folder cc line in README.md" >&2; exit 1; }
# The README's command runs in the checkout: $PWD there is the checkout.
cmd=${cmd/cc mine.c/cc $WORK/mine.c}
(cd "$ROOT" && eval "${cmd/-o mine/-o $WORK/mine}")
./mine models/fortunes-gpt2 | tee c.out
grep -q '^Captain,' c.out || { echo "C snippet printed no completion" >&2; fail=1; }
if pkg-config --exists lora 2>/dev/null; then
    stage "C snippet with pkg-config (installed library)"
    pcmd=$(grep -E '^cc mine\.c \$\(pkg-config' "$ROOT/README.md" | sed 's/ *#.*$//')
    eval "${pcmd/-o mine/-o mine-installed}"
    ./mine-installed models/fortunes-gpt2 >/dev/null || fail=1
else
    echo "(pkg-config lora not found: the installed-library build is skipped; scripts/install.sh installs it)"
fi

stage "Python snippet in a fresh venv after pip install ./python"
python3 -m venv --without-pip --system-site-packages venv
cp -r "$ROOT/python" pysrc   # built from a copy: the build leaves nothing in the checkout
rm -rf pysrc/build pysrc/*.egg-info pysrc/lora/liblora.so*
(unset LORA_LIBRARY; LORA_LIBRARY="$ROOT/.build/release/liblora.so" \
    python3 -m pip --python venv/bin/python install --quiet --no-build-isolation --no-deps --no-index ./pysrc)
snippet python >snippet.py
env -u LORA_LIBRARY venv/bin/python - <<'PY'
import lora, os
assert os.path.dirname(lora.library_path) == os.path.dirname(lora.__file__), lora.library_path
print("lora package carries", lora.library_path)
PY
env -u LORA_LIBRARY venv/bin/python snippet.py >py.out
tail -n 3 py.out
grep -q "'step': 50" py.out || { echo "Python snippet did not train 50 steps" >&2; fail=1; }
[[ -s my-adapter/adapter_model.safetensors ]] || { echo "Python snippet saved no adapter" >&2; fail=1; }
rm -rf my-adapter

((fail == 0)) && echo "readme: every snippet ran"
exit $fail
