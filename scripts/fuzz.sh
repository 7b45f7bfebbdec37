#!/usr/bin/env bash
# Runs the libFuzzer harnesses of fuzz/harnesses (see fuzz/README.md).
#
#   scripts/fuzz.sh <harness|all|list> [seconds] [extra libFuzzer flags...]
#
# Builds every harness once (-sanitize=fuzzer,address, scratch path
# .build-fuzz), then runs the harness for `seconds` (default 30) on a scratch
# copy of its seed corpus fuzz/corpus/<harness> (the committed corpus is not
# touched), one worker, with the dictionary fuzz/dict/<harness>.dict. A crash, trap, sanitizer report, timeout or leak stops
# the run; its input is kept as fuzz-artifacts/<harness>/crash-* (or leak-*,
# timeout-*, oom-*; with the run's log, fuzz.log; the directory is emptied
# when that harness runs again) and the script exits non-zero. `all` runs every harness
# in turn and fails if any failed. Environment: FUZZ_WORK (scratch corpus
# directory, default .build-fuzz/corpus), FUZZ_ARTIFACTS (default
# fuzz-artifacts), FUZZ_RSS_MB (default 2048), FUZZ_TIMEOUT (s per input,
# default 10).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="/opt/swift/usr/bin:$PATH"

harnesses=(safetensors config adapter_config vocab_merges tokenizer_json bpe jsonl json)
target_name() {  # vocab_merges -> FuzzVocabMerges
    local out=Fuzz part
    IFS=_ read -ra parts <<<"$1"
    for part in "${parts[@]}"; do out+="${part^}"; done
    echo "$out"
}

usage() { echo "usage: $0 <$(IFS='|'; echo "${harnesses[*]}")|all|list> [seconds] [libFuzzer flags...]" >&2; exit 2; }
(($# >= 1)) || usage
which=$1; shift
seconds=${1:-30}; (($# > 0)) && shift
[[ $seconds =~ ^[0-9]+$ ]] || usage
if [[ $which == list ]]; then printf '%s\n' "${harnesses[@]}"; exit 0; fi
if [[ $which != all ]]; then
    printf '%s\n' "${harnesses[@]}" | grep -qx -- "$which" || usage
fi

scratch=$root/.build-fuzz
echo "== fuzz: building the harnesses (debug, -sanitize=fuzzer,address)"
if ! (cd fuzz/harnesses && swift build -c debug --scratch-path "$scratch" \
        -Xswiftc -sanitize=fuzzer,address 2>&1 | grep -v "Cannot export local symbol"; exit "${PIPESTATUS[0]}"); then
    echo "fuzz: build failed" >&2
    exit 1
fi
bin=$scratch/debug
work=${FUZZ_WORK:-$scratch/corpus}
artifacts=${FUZZ_ARTIFACTS:-$root/fuzz-artifacts}

run_one() {
    local h=$1 exe corpus out log status; shift
    exe=$bin/$(target_name "$h")
    corpus=$work/$h
    out=$artifacts/$h
    log=$out/fuzz.log
    rm -rf "$corpus" "$out"; mkdir -p "$corpus" "$out"
    cp fuzz/corpus/"$h"/* "$corpus"/
    local dict=()
    [[ -f fuzz/dict/$h.dict ]] && dict=(-dict="$root/fuzz/dict/$h.dict")
    echo "== fuzz: $h for ${seconds}s (log: $log)"
    # ASan: leaks are not checked per input (Swift globals and caches would
    # be reported); everything else aborts the run.
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:symbolize=1} \
    "$exe" -max_total_time="$seconds" -print_final_stats=1 \
        -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -timeout="${FUZZ_TIMEOUT:-10}" \
        -artifact_prefix="$out/" "${dict[@]}" "$@" "$corpus" >"$log" 2>&1
    status=$?
    grep -E "^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)" "$log" | sed "s/^/   $h: /"
    if ((status != 0)); then
        echo "fuzz: $h FAILED (exit $status); artifacts in $out:" >&2
        ls "$out" | grep -v '^fuzz.log$' | sed 's/^/   /' >&2
        grep -m1 -E "ERROR: (libFuzzer|AddressSanitizer)|Fatal error|fatal error|SUMMARY" "$log" >&2 || tail -20 "$log" >&2
        return 1
    fi
    return 0
}

failed=()
if [[ $which == all ]]; then
    for h in "${harnesses[@]}"; do run_one "$h" "$@" || failed+=("$h"); done
else
    run_one "$which" "$@" || failed+=("$which")
fi
if ((${#failed[@]})); then
    echo "fuzz: crashed: ${failed[*]} (inputs in $artifacts/<harness>/; reproduce with $bin/<FuzzTarget> <file>)" >&2
    exit 1
fi
echo "fuzz: no crash"
