#!/usr/bin/env bash
# The model's F32 products on OpenBLAS, BLIS and oneDNN side by side (the
# speed issue's "measure alternatives that are Debian packages"): GFLOP/s per
# product shape at M = 512 (prefill) and 1024 (training, 4×256), each library
# run as liblora runs OpenBLAS (THREADS pthreads, each single-threaded on its
# own output columns: "split") and with its own threads ("own"). Rounds
# alternate the libraries; medians (min–max) over RUNS rounds (default 3).
# Installs nothing: a library that is not there is reported and skipped
# (apt-get install libblis-dev libdnnl-dev for the alternatives).
#
#   RUNS=3 THREADS=2 scripts/bench_blas.sh
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
runs=${RUNS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -pthread -o "$work/bench_blas" scripts/bench_blas.c -ldl -lm
rt=()
if [[ $(id -u) == 0 && -z ${NO_CHRT:-} ]] && command -v chrt >/dev/null; then rt=(chrt -f 10); fi
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs || true)
fam=$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs || true)
mod=$(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | xargs || true)
echo "machine: $cpu (family $fam model $mod), $(nproc) cores; ${rt[*]:-no chrt}; $runs rounds; $threads threads"
for ((i = 1; i <= runs; i++)); do
    for m in 512 1024; do
        OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "${rt[@]}" "$work/bench_blas" "$m" "$threads" split
        OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "${rt[@]}" "$work/bench_blas" "$m" "$threads" own
    done
done | tee "$work/rows.jsonl"
python3 - "$work/rows.jsonl" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for r in rows:
    if "error" in r: print(f"{r['library']}: {r.get('shape', '')} {r['error']}")
by = collections.defaultdict(list)
info = {}
for r in rows:
    if "gflop_per_s" in r:
        by[(r["M"], r["library"], r["mode"], r["shape"])].append(r["gflop_per_s"])
        info[r["library"]] = r.get("core") or r.get("arch") or ""
shapes = list(dict.fromkeys(k[3] for k in by))
for m in sorted({k[0] for k in by}):
    print(f"\nM = {m}: GFLOP/s, medians over rounds (all: min–max)")
    print(f"{'library':22} {'mode':6} " + " ".join(f"{s[:14]:>14}" for s in shapes))
    for lib, mode in dict.fromkeys((k[1], k[2]) for k in by if k[0] == m):
        cells = []
        for s in shapes:
            xs = by.get((m, lib, mode, s), [])
            if not xs: cells.append("-"); continue
            cell = f"{statistics.median(xs):.0f}"
            if s == "all": cell += f" ({min(xs):.0f}–{max(xs):.0f})"
            cells.append(cell)
        name = f"{lib} {info.get(lib, '')}".strip()
        print(f"{name:22} {mode:6} " + " ".join(f"{c:>14}" for c in cells))
PY
