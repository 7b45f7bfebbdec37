#!/usr/bin/env bash
# The C side of liblora's tests: the header as C99 and C++, the export list,
# Tests/C/test_capi.c, the examples in examples-c/, and all of them again
# under valgrind. Run `swift build --product lora` first.
#
#   Tests/C/run.sh [LIBDIR]      LIBDIR holds liblora.so (default .build/debug)
#
# Environment: LIBDIR (same as the argument), CC (cc), CXX (c++),
# VALGRIND=0 to skip the valgrind stages, STEPS (finetune steps, default 5;
# 1 under valgrind), KEEP_WORK=1 to keep the scratch directory.
# Prints one line per stage, test_capi's "N passed, N failed", and as its last
# line "N passed, N failed" over test_capi's checks and this script's stages.
# Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

LIBDIR=${1:-${LIBDIR:-.build/debug}}
CC=${CC:-cc}
CXX=${CXX:-c++}
STEPS=${STEPS:-5}
RUN_VALGRIND=${VALGRIND:-1}
FIXTURES=$ROOT/Tests/LoRATests/Fixtures
CFLAGS_STRICT=(-std=c99 -Wall -Wextra -Werror -pedantic)
# Only definite leaks and memory errors fail: the Swift runtime keeps
# metadata caches that valgrind reports as "possibly lost"/"still reachable".
VALGRIND_CMD="valgrind -q --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --error-exitcode=1 --num-callers=30"

if [[ ! -f $LIBDIR/liblora.so ]]; then
    echo "run.sh: $LIBDIR/liblora.so not found; run 'swift build --product lora' first" >&2
    exit 1
fi
LIB=$(cd "$LIBDIR" && pwd)/liblora.so

WORK=$(mktemp -d "${TMPDIR:-/tmp}/liblora-ctests.XXXXXX")
cleanup() { if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "run.sh: kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
mkdir -p "$WORK/bin" "$WORK/vglib"
ln -sfn "$LIB" "$WORK/bin/liblora.so.1"

stages_passed=0
stages_failed=0
failed_names=()
checks_passed=0
checks_failed=0

# stage NAME COMMAND...: runs a command, reports ok/FAILED and its time.
stage() {
    local name=$1
    shift
    echo "== $name"
    local start=$SECONDS
    if "$@"; then
        stages_passed=$((stages_passed + 1))
        echo "-- ok: $name ($((SECONDS - start)) s)"
    else
        stages_failed=$((stages_failed + 1))
        failed_names+=("$name")
        echo "-- FAILED: $name ($((SECONDS - start)) s)"
    fi
}

header_cxx() {
    "$CXX" -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -Iinclude Tests/C/header_cxx.cpp
}

build_test() {
    "$CC" "${CFLAGS_STRICT[@]}" -g -O1 -Iinclude Tests/C/test_capi*.c -o "$WORK/bin/test_capi" \
        "$WORK/bin/liblora.so.1" -Wl,--enable-new-dtags -Wl,-rpath,'$ORIGIN' -pthread -lm
}

# Global symbols of liblora.so (uppercase nm type, without the version node)
# must be exactly the functions declared in include/lora.h.
exports() {
    local declared=$WORK/declared.txt exported=$WORK/exported.txt
    # Preprocessing drops the comments, which mention function names too.
    "$CC" -E -P include/lora.h | grep -oE '\blora_[a-z0-9_]+[[:space:]]*\(' | sed -E 's/[[:space:]]*\($//' |
        sort -u >"$declared"
    nm -D --defined-only "$LIB" | awk '$2 ~ /^[A-Z]$/ { print $3 }' | sed 's/@.*//' | grep -vx 'LIBLORA_1' |
        sort -u >"$exported"
    local n_declared n_exported
    n_declared=$(wc -l <"$declared")
    n_exported=$(wc -l <"$exported")
    if [[ $n_declared -lt 30 ]]; then
        echo "exports: only $n_declared functions found in include/lora.h; the extraction is broken" >&2
        return 1
    fi
    if ! diff -u --label "declared in include/lora.h" --label "exported by liblora.so" "$declared" "$exported"; then
        echo "exports: liblora.so's dynamic symbols differ from include/lora.h (see the diff above)" >&2
        return 1
    fi
    # Not `nm | grep -q`: under pipefail, grep's early exit makes nm die of
    # SIGPIPE once the symbol list outgrows the pipe, and the check fails.
    if ! nm -D --defined-only "$LIB" | grep -c ' A LIBLORA_1$' >/dev/null; then
        echo "exports: the version node LIBLORA_1 is missing" >&2
        return 1
    fi
    echo "exports: $n_exported functions, all declared in include/lora.h, all declared ones exported"
}

# run_test_capi LOG [PREFIX...]: runs test_capi (under PREFIX), keeps its output.
run_test_capi() {
    local log=$1
    shift
    local dir
    dir=$(mktemp -d "$WORK/test_capi.XXXXXX")
    "$@" "$WORK/bin/test_capi" "$FIXTURES" "$dir" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    grep -qE '^[0-9]+ passed, 0 failed$' "$log" && [[ $rc == 0 ]]
}

test_capi() {
    run_test_capi "$WORK/test_capi.log"
    local rc=$?
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$WORK/test_capi.log" | tail -n 1)
    if [[ -n $line ]]; then
        checks_passed=$(awk '{ print $1 }' <<<"$line")
        checks_failed=$(awk '{ print $3 }' <<<"$line")
    else
        checks_failed=1 # crashed before its summary
    fi
    return $rc
}

examples() {
    env -u LD_LIBRARY_PATH make -s -C examples-c VALGRIND= LIBDIR="$(dirname "$LIB")" BIN="$WORK/examples" \
        OUT="$WORK/examples/adapter" STEPS="$STEPS" run &&
        [[ -s $WORK/examples/adapter/adapter_model.safetensors && -s $WORK/examples/adapter/adapter_config.json ]]
}

# Valgrind 3.19 cannot read the DWARF 5 that swiftc emits ("unhandled dwarf2
# abbrev form code 0x25" and it gives up): it runs a copy of the library
# without debug sections, found first through LD_LIBRARY_PATH. Reports still
# name liblora's functions (from the symbol table), without line numbers.
valgrind_lib() {
    command -v valgrind >/dev/null || { echo "valgrind is not installed (VALGRIND=0 skips these stages)" >&2; return 1; }
    objcopy --strip-debug "$LIB" "$WORK/vglib/liblora.so.1"
}

# Under valgrind, OpenBLAS runs single-threaded: its worker threads spin while
# waiting, which valgrind (running one thread at a time) makes very slow.
valgrind_test_capi() {
    LD_LIBRARY_PATH=$WORK/vglib OPENBLAS_NUM_THREADS=1 LORA_TEST_QUICK=1 \
        run_test_capi "$WORK/test_capi.valgrind.log" $VALGRIND_CMD
}

# One optimizer step on a small file (the full sample costs ~20 s per step
# and per evaluation under valgrind).
valgrind_examples() {
    head -c 400 examples-c/sample.txt >"$WORK/small.txt"
    LD_LIBRARY_PATH=$WORK/vglib OPENBLAS_NUM_THREADS=1 make -s -C examples-c LIBDIR="$(dirname "$LIB")" \
        BIN="$WORK/examples" DATA="$WORK/small.txt" OUT="$WORK/examples/adapter-valgrind" STEPS=1 \
        VALGRIND="$VALGRIND_CMD" run
}

total_start=$SECONDS
stage "lora.h as C++ (c++ -std=c++11 -fsyntax-only)" header_cxx
stage "build test_capi (C99, -Wall -Wextra -Werror -pedantic)" build_test
stage "export list (nm -D) == functions of lora.h" exports
if [[ -x $WORK/bin/test_capi ]]; then
    stage "test_capi" test_capi
fi
stage "examples-c: make run (STEPS=$STEPS)" examples
if [[ $RUN_VALGRIND != 0 ]]; then
    stage "valgrind: stripped copy of liblora.so" valgrind_lib
    if [[ -x $WORK/bin/test_capi && -f $WORK/vglib/liblora.so.1 ]]; then
        stage "valgrind: test_capi (LORA_TEST_QUICK=1)" valgrind_test_capi
        stage "valgrind: examples (generate, finetune STEPS=1)" valgrind_examples
    fi
else
    echo "== valgrind stages skipped (VALGRIND=0)"
fi

echo "== summary ($((SECONDS - total_start)) s)"
echo "stages: $stages_passed passed, $stages_failed failed${failed_names:+ (${failed_names[*]})}"
echo "test_capi checks: $checks_passed passed, $checks_failed failed"
echo "$((checks_passed + stages_passed)) passed, $((checks_failed + stages_failed)) failed"
[[ $stages_failed == 0 && $checks_failed == 0 ]]
