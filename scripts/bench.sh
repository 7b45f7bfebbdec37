#!/usr/bin/env bash
# Benchmarks liblora against the reference engines on the same machine, side
# by side, and prints the ratios: inference (prefill 512 tokens with logits
# for every position, batch-1 decode) against transformers; LoRA training
# (r=8, alpha=16 on c_attn+attn.c_proj+mlp.c_fc; 4x256 and 1x1024) against
# PyTorch + PEFT. GPT-2 124M-shaped models with random weights, 2 threads.
# Each measurement runs in its own process (peak RSS is its own).
#
#   RUNS=5 scripts/bench.sh      # rounds (default 5): medians and min–max over rounds
#
# Every liblora figure is also given as a fraction of this machine's bound,
# measured by `lora bench` in the same process (sgemm on the model's shapes
# for prefill and training, a sweep of the weights for decode).
# The reference side runs only when torch, transformers and peft import.
# Machines here are shared: as root, every process runs under chrt -f 10
# (real-time priority: background work cannot take a core mid-measurement);
# set NO_CHRT=1 to run without it. Read the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
threads=${THREADS:-2}
runs=${RUNS:-5}
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
swift build -c release --product lora-cli >/dev/null
lora=.build/release/lora-cli
rt=()
if [[ $(id -u) == 0 && -z ${NO_CHRT:-} ]] && command -v chrt >/dev/null; then rt=(chrt -f 10); fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
fam=$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs); mod=$(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | xargs)
echo "machine: $cpu (family $fam model $mod), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); ${rt[*]:-no chrt}; $runs rounds"
"${rt[@]}" $lora bench bound --threads "$threads" --prompt 512 --batch 4 --block 256 | tee -a "$out"
have_ref=0
python3 -c "import torch, transformers, peft" 2>/dev/null && have_ref=1
for ((i = 1; i <= runs; i++)); do
    echo "-- round $i"
    "${rt[@]}" $lora bench inference --threads "$threads" | tee -a "$out"
    "${rt[@]}" $lora bench train --threads "$threads" --batch 4 --block 256 | tee -a "$out"
    "${rt[@]}" $lora bench train --threads "$threads" --batch 1 --block 1024 | tee -a "$out"
    if ((have_ref)); then
        "${rt[@]}" python3 scripts/bench_transformers.py --threads "$threads" 2>/dev/null | grep '^{' | tee -a "$out"
        "${rt[@]}" python3 scripts/bench_peft.py --threads "$threads" --batch 4 --block 256 2>/dev/null | grep '^{' | tee -a "$out"
        "${rt[@]}" python3 scripts/bench_peft.py --threads "$threads" --batch 1 --block 1024 2>/dev/null | grep '^{' | tee -a "$out"
    fi
done
((have_ref)) || echo "(torch/transformers/peft not installed: reference side skipped; pip install torch transformers peft)"
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def pick(engine, bench, **kw):
    return [r for r in rows if r.get("engine", "liblora") == engine and r.get("bench") == bench
            and "tokens_per_s" in r and all(r.get(k) == v for k, v in kw.items())]
def span(xs):
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})" if xs else "-"
core = next((r["core"] for r in rows if r.get("core")), "?")
print()
print(f"OpenBLAS core {core}; medians over rounds (min–max)")
print(f"{'measurement':28} {'liblora':>22} {'of bound':>9} {'reference':>22} {'ratio':>6}")
for bench, ref, kw, label in [
    ("prefill", "transformers", {}, "prefill 512 tokens (tok/s)"),
    ("decode", "transformers", {}, "decode batch 1 (tok/s)"),
    ("lora_train", "pytorch+peft", {"batch": 4, "block": 256}, "LoRA train 4x256 (tok/s)"),
    ("lora_train", "pytorch+peft", {"batch": 1, "block": 1024}, "LoRA train 1x1024 (tok/s)"),
]:
    a, b = pick("liblora", bench, **kw), pick(ref, bench, **kw)
    if not a: continue
    av = [r["tokens_per_s"] for r in a]; bv = [r["tokens_per_s"] for r in b]
    frac = statistics.median(r["fraction_of_bound"] for r in a) if all("fraction_of_bound" in r for r in a) else float("nan")
    ratio = statistics.median(av) / statistics.median(bv) if bv else float("nan")
    print(f"{label:28} {span(av):>22} {frac:>9.2f} {span(bv):>22} {ratio:>6.2f}")
    if bench == "lora_train":
        ar = [r["peak_rss_gib"] for r in a]; br = [r["peak_rss_gib"] for r in b]
        rr = statistics.median(ar) / statistics.median(br) if br else float("nan")
        print(f"{'  peak RSS (GiB)':28} {statistics.median(ar):>22.3f} {'':>9} {(statistics.median(br) if br else float('nan')):>22.3f} {rr:>6.2f}")
PY
