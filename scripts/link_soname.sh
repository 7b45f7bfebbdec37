#!/usr/bin/env bash
# Makes the SONAME link liblora.so.<ABI> -> liblora.so in a SwiftPM build
# folder (SwiftPM writes only liblora.so; a program linked with -llora asks
# the loader for the SONAME, liblora.so.1).   scripts/link_soname.sh DIR...
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
abi=$(sed -n 's/^#define LORA_ABI_VERSION \([0-9]*\).*/\1/p' "$root/include/lora.h")
for dir in "$@"; do
    [[ -f $dir/liblora.so ]] || { echo "link_soname.sh: $dir/liblora.so not found" >&2; exit 1; }
    ln -sfn liblora.so "$dir/liblora.so.$abi"
done
