#!/usr/bin/env bash
# Benchmarks liblora against the reference engines on the same machine, side
# by side, and prints the ratios: inference (prefill 512 tokens with logits
# for every position, batch-1 decode) against transformers; LoRA training
# (r=8, alpha=16 on c_attn+attn.c_proj+mlp.c_fc; 4x256 and 1x1024) against
# PyTorch + PEFT. GPT-2 124M-shaped models with random weights, 2 threads.
# Each measurement runs in its own process (peak RSS is its own).
# The reference side runs only when torch, transformers and peft import.
# Machines here are shared and noisy: run on a quiet machine, read ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
threads=${THREADS:-2}
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
swift build -c release --product lora-cli >/dev/null
lora=.build/release/lora-cli
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
$lora bench inference --threads "$threads" | tee -a "$out"
$lora bench train --threads "$threads" --batch 4 --block 256 | tee -a "$out"
$lora bench train --threads "$threads" --batch 1 --block 1024 | tee -a "$out"
if python3 -c "import torch, transformers, peft" 2>/dev/null; then
    python3 scripts/bench_transformers.py --threads "$threads" 2>/dev/null | grep '^{' | tee -a "$out"
    python3 scripts/bench_peft.py --threads "$threads" --batch 4 --block 256 2>/dev/null | grep '^{' | tee -a "$out"
    python3 scripts/bench_peft.py --threads "$threads" --batch 1 --block 1024 2>/dev/null | grep '^{' | tee -a "$out"
else
    echo "(torch/transformers/peft not installed: reference side skipped; pip install torch transformers peft)"
fi
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def find(engine, bench, **kw):
    for r in rows:
        if r.get("engine", "liblora") == engine and r.get("bench") == bench and all(r.get(k) == v for k, v in kw.items()):
            return r
print()
print(f"{'measurement':34} {'liblora':>10} {'reference':>10} {'ratio':>7}")
for bench, ref, kw, label in [
    ("prefill", "transformers", {}, "prefill 512 tokens (tok/s)"),
    ("decode", "transformers", {}, "decode batch 1 (tok/s)"),
    ("lora_train", "pytorch+peft", {"batch": 4, "block": 256}, "LoRA train 4x256 (tok/s)"),
    ("lora_train", "pytorch+peft", {"batch": 1, "block": 1024}, "LoRA train 1x1024 (tok/s)"),
]:
    a, b = find("liblora", bench, **kw), find(ref, bench, **kw)
    if not a: continue
    bv = b["tokens_per_s"] if b else None
    print(f"{label:34} {a['tokens_per_s']:>10.1f} {bv if bv else '-':>10} {a['tokens_per_s'] / bv if bv else float('nan'):>7.2f}")
    if bench == "lora_train":
        br = b["peak_rss_gib"] if b else None
        print(f"{'  peak RSS (GiB)':34} {a['peak_rss_gib']:>10.3f} {br if br else '-':>10} {a['peak_rss_gib'] / br if br else float('nan'):>7.2f}")
PY
