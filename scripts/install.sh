#!/usr/bin/env bash
# Installs what liblora needs, builds it in release mode and installs it as
# one unit under PREFIX (default /usr/local, or ~/.local without root):
#   PREFIX/bin/lora                         the command line
#   PREFIX/lib/liblora.so.1 (+ liblora.so)  the C library (SONAME liblora.so.1)
#   PREFIX/include/lora.h                   its header
#   PREFIX/lib/pkgconfig/lora.pc            `pkg-config --cflags --libs lora`
#   PREFIX/share/lora/fortunes-gpt2         the embedded model (found by `lora`
#                                           from where it is installed)
# and, in the build folder, the SONAME link .build/release/liblora.so.1 so
# programs linked against the build folder start too.
#   scripts/install.sh [--prefix DIR] [--python]   (--python: also pip install ./python)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-}
PYTHON_TOO=0
while (($#)); do
    case $1 in
        --prefix) PREFIX=$2; shift 2 ;;
        --python) PYTHON_TOO=1; shift ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ -z $PREFIX ]]; then
    if [[ -w /usr/local/bin || $(id -u) == 0 ]]; then PREFIX=/usr/local; else PREFIX=$HOME/.local; fi
fi
bash scripts/bootstrap.sh
export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product lora-cli
swift build -c release --product lora
bash scripts/link_soname.sh .build/release

version=$(cat VERSION)
abi=$(sed -n 's/^#define LORA_ABI_VERSION \([0-9]*\).*/\1/p' include/lora.h)
mkdir -p "$PREFIX/bin" "$PREFIX/lib/pkgconfig" "$PREFIX/include" "$PREFIX/share/lora"
install -m 755 .build/release/lora-cli "$PREFIX/bin/lora"
install -m 755 .build/release/liblora.so "$PREFIX/lib/liblora.so.$abi"
ln -sfn "liblora.so.$abi" "$PREFIX/lib/liblora.so"
install -m 644 include/lora.h "$PREFIX/include/lora.h"
rm -rf "$PREFIX/share/lora/fortunes-gpt2"
cp -r models/fortunes-gpt2 "$PREFIX/share/lora/fortunes-gpt2"
cat >"$PREFIX/lib/pkgconfig/lora.pc" <<PC
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: lora
Description: liblora: GPT-2 inference and LoRA fine-tuning on the CPU (C ABI)
Version: $version
Libs: -L\${libdir} -Wl,-rpath,\${libdir} -llora
Cflags: -I\${includedir}
PC
# The system linker cache, when installing into a standard prefix as root.
if [[ $(id -u) == 0 ]] && command -v ldconfig >/dev/null; then ldconfig "$PREFIX/lib" 2>/dev/null || true; fi
echo "installed liblora $version under $PREFIX: bin/lora, lib/liblora.so.$abi, include/lora.h, lib/pkgconfig/lora.pc, share/lora/fortunes-gpt2"
if [[ $PYTHON_TOO == 1 ]]; then
    LORA_LIBRARY="$PWD/.build/release/liblora.so" python3 -m pip install --quiet ./python 2>/dev/null ||
        LORA_LIBRARY="$PWD/.build/release/liblora.so" python3 -m pip install --quiet --break-system-packages ./python
    echo "installed the Python package lora (with liblora.so inside)"
fi
case ":$PATH:" in *":$PREFIX/bin:"*) ;; *) echo "note: add $PREFIX/bin to your PATH" ;; esac
case ":${PKG_CONFIG_PATH:-}:" in
    *":$PREFIX/lib/pkgconfig:"*) ;;
    *) [[ $PREFIX == /usr/local || $PREFIX == /usr ]] || echo "note: add $PREFIX/lib/pkgconfig to PKG_CONFIG_PATH" ;;
esac
