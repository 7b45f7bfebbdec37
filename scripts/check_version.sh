#!/usr/bin/env bash
# One version source: VERSION (MAJOR.MINOR.PATCH). Checks that lora.h's
# LORA_VERSION_* macros (which the library's lora_version_string and
# lora_version_number are built from), python/pyproject.toml and
# lora.__version__ carry it, and that the SONAME in Package.swift and the
# version node of exports.map match LORA_ABI_VERSION. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
want=$(tr -d '[:space:]' <VERSION)
[[ $want =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "VERSION: '$want' is not MAJOR.MINOR.PATCH" >&2; exit 1; }
IFS=. read -r major minor patch <<<"$want"
macro() { sed -n "s/^#define $1 \\([0-9]*\\).*/\\1/p" include/lora.h; }
check() { # what got want
    if [[ "$2" != "$3" ]]; then echo "version: $1 is '$2', expected '$3'" >&2; fail=1; fi
}
check "LORA_VERSION_MAJOR (include/lora.h)" "$(macro LORA_VERSION_MAJOR)" "$major"
check "LORA_VERSION_MINOR (include/lora.h)" "$(macro LORA_VERSION_MINOR)" "$minor"
check "LORA_VERSION_PATCH (include/lora.h)" "$(macro LORA_VERSION_PATCH)" "$patch"
check "lora_version_string comment (include/lora.h)" \
    "$(sed -n 's/.*lora_version_string(void); *\/\* "\([0-9.]*\)".*/\1/p' include/lora.h)" "$want"
check "version (python/pyproject.toml)" "$(sed -n 's/^version = "\(.*\)"/\1/p' python/pyproject.toml)" "$want"
check "__version__ (python/lora/__init__.py)" "$(sed -n 's/^__version__ = "\(.*\)"/\1/p' python/lora/__init__.py)" "$want"
abi=$(macro LORA_ABI_VERSION)
check "SONAME (Package.swift)" "$(grep -o 'soname=liblora\.so\.[0-9]*' Package.swift | sed 's/.*\.//')" "$abi"
check "EXPECTED_ABI_VERSION (python/lora/_capi.py)" "$(sed -n 's/^EXPECTED_ABI_VERSION = \([0-9]*\)/\1/p' python/lora/_capi.py)" "$abi"
check "version node (Sources/LoraCAPI/exports.map)" "$(sed -n 's/^LIBLORA_\([0-9]*\) {/\1/p' Sources/LoraCAPI/exports.map)" "$abi"
check "CHANGELOG.md top entry" "$(sed -n 's/^## \([0-9][0-9.]*\).*/\1/p' CHANGELOG.md | head -n 1)" "$want"
((fail == 0)) && echo "version $want (ABI $abi): VERSION, lora.h, Package.swift, exports.map, python/, CHANGELOG.md agree"
exit $fail
