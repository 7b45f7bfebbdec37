#!/usr/bin/env bash
# Reduced-precision base weights side by side (the figures of the README's
# "Reduced-precision base weights" section, on whatever CPU this is):
# - per dtype (f32, bf16, f16, q8_0): batch-1 decode and prefill 512
#   (`lora bench inference --dtype D`), with the fraction of the bound
#   `lora bench` measures for that dtype;
# - LoRA training r=8 4x256 on an f32 and on a bf16 base (`lora bench train`);
# - the references beside them: transformers F32 (prefill, decode) and
#   PyTorch+PEFT training in F32 and under torch.autocast bf16;
# - peak RSS of `lora generate` (/usr/bin/time) per dtype on a GPT-2 124M
#   checkpoint saved by transformers (random weights, the real GPT-2
#   vocabulary from TOKENIZER_DIR, default ../shared/data/gpt2-tokenizer,
#   read from there into a scratch folder): 4 new tokens after a 2-token
#   prompt, 8 after a 501-token one, that again with the KV cache in bf16.
# Rounds alternate the dtypes (and liblora with the references), so a host
# that slows down mid-run slows every column alike. GPT-2 124M shapes, 2
# threads; as root every speed measurement runs under chrt -f 10 (NO_CHRT=1:
# not). A measurement that fails is reported and left out; the rows measured
# are kept (OUT, default $TMPDIR/bench_dtype-<time>.jsonl; the path is printed).
#
#   RUNS=3 scripts/bench_dtype.sh      # rounds (default 3): medians and min–max
#   ENGINE=1 ...                       # also `lora bench engine --sequences 16` per dtype
#   AUTOCAST=off ...                   # PyTorch+PEFT in F32 only (on CPUs without
#                                      # AVX512-BF16 its bf16 autocast is emulated: one
#                                      # run took over 14 minutes on an AMD Zen 2)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="/opt/swift/usr/bin:$PATH"
threads=${THREADS:-2}
runs=${RUNS:-3}
tokdir=${TOKENIZER_DIR:-$root/../shared/data/gpt2-tokenizer}
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
swift build -c release --product lora-cli >/dev/null
lora=$root/.build/release/lora-cli
rt=()
if [[ $(id -u) == 0 && -z ${NO_CHRT:-} ]] && command -v chrt >/dev/null; then rt=(chrt -f 10); fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${OUT:-${TMPDIR:-/tmp}/bench_dtype-$(date +%Y%m%d-%H%M%S).jsonl}
: >"$out"
echo "rows: $out"
# Runs a measurement; a failure is reported (its stderr kept) and the run goes on.
try() {
    "$@" 2>"$work/err" || { echo "failed: $*" >&2; tail -n 5 "$work/err" >&2; }
}
dtypes=(f32 bf16 f16 q8_0)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs || true)
fam=$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs || true)
mod=$(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | xargs || true)
echo "machine: $cpu (family $fam model $mod), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); ${rt[*]:-no chrt}; $runs rounds; $(git rev-parse --short HEAD)"
have_ref=0
python3 -c "import torch, transformers, peft" 2>/dev/null && have_ref=1

for ((i = 1; i <= runs; i++)); do
    echo "-- round $i"
    for d in "${dtypes[@]}"; do
        try "${rt[@]}" "$lora" bench inference --threads "$threads" --dtype "$d" --repeats 3 | tee -a "$out"
    done
    for d in f32 bf16; do
        try "${rt[@]}" "$lora" bench train --threads "$threads" --dtype "$d" --batch 4 --block 256 | tee -a "$out"
    done
    if ((have_ref)); then
        try "${rt[@]}" python3 scripts/bench_transformers.py --threads "$threads" | { grep '^{' || true; } | tee -a "$out"
        for a in ${AUTOCAST:-off bf16}; do
            try "${rt[@]}" python3 scripts/bench_peft.py --threads "$threads" --batch 4 --block 256 --autocast "$a" \
                | { grep '^{' || true; } | tee -a "$out"
        done
    fi
    if [[ ${ENGINE:-0} == 1 ]]; then
        for d in "${dtypes[@]}"; do
            try "${rt[@]}" "$lora" bench engine --threads "$threads" --dtype "$d" --sequences 16 --joins 4 \
                | sed "s/^{/{\"dtype\":\"$d\",/" | tee -a "$out"
        done
    fi
done

# Peak RSS of inference per dtype, on a checkpoint as users have them.
if [[ -f $tokdir/vocab.json && -f $tokdir/merges.txt && -x /usr/bin/time ]] &&
    python3 -c "import torch, transformers" 2>/dev/null &&
    python3 - "$work/gpt2" 2>"$work/err" <<'PY'
import sys, torch, transformers
torch.manual_seed(0)
m = transformers.GPT2LMHeadModel(transformers.GPT2Config())
m.save_pretrained(sys.argv[1], safe_serialization=True)
PY
then
    cp "$tokdir/vocab.json" "$tokdir/merges.txt" "$work/gpt2/"
    long=$(python3 -c 'print("Hello" + " the" * 500)')
    rss() { # dtype case kv prompt new
        if ! /usr/bin/time -f '%M' -o "$work/rss" "$lora" generate --model "$work/gpt2" --dtype "$1" --kv-cache-dtype "$3" \
            --temperature 0 --ignore-eos --max-new-tokens "$5" --threads "$threads" "$4" >/dev/null 2>"$work/err"; then
            echo "failed: peak RSS of $1 $2" >&2
            tail -n 5 "$work/err" >&2
            return 0
        fi
        local kb
        kb=$(tail -n 1 "$work/rss")
        echo "{\"bench\":\"rss\",\"dtype\":\"$1\",\"case\":\"$2\",\"peak_rss_mib\":$(((kb + 512) / 1024))}" | tee -a "$out"
    }
    for d in "${dtypes[@]}"; do
        rss "$d" short f32 "Hi there" 4
        rss "$d" long f32 "$long" 8
        rss "$d" long_kv_bf16 bf16 "$long" 8
    done
else
    echo "(peak RSS skipped: needs /usr/bin/time, torch + transformers (a checkpoint saved by them) and the GPT-2 vocabulary in $tokdir)"
fi
((have_ref)) || echo "(torch/transformers/peft not installed: reference side skipped)"

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
DTYPES = ["f32", "bf16", "f16", "q8_0"]
def sel(**kw):
    return [r for r in rows if all(r.get(k, None if k != "engine" else "liblora") == v for k, v in kw.items())]
def span(xs):
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})" if xs else "-"
def med(xs):
    return statistics.median(xs) if xs else float("nan")
core = next((r["core"] for r in rows if r.get("core")), "?")
print(f"\nOpenBLAS core {core}; medians over rounds (min–max)")
print(f"{'dtype':6} {'decode tok/s':>20} {'of bound':>8} {'prefill 512 tok/s':>22} {'of bound':>8} {'train 4x256 tok/s':>22}")
for d in DTYPES:
    dec = sel(engine="liblora", bench="decode", dtype=d)
    pre = sel(engine="liblora", bench="prefill", dtype=d)
    tr = sel(engine="liblora", bench="lora_train", dtype=d)
    print(f"{d:6} {span([r['tokens_per_s'] for r in dec]):>20} {med([r['fraction_of_bound'] for r in dec]):>8.2f}"
          f" {span([r['tokens_per_s'] for r in pre]):>22} {med([r['fraction_of_bound'] for r in pre]):>8.2f}"
          f" {span([r['tokens_per_s'] for r in tr]):>22}")
ref_dec = [r["tokens_per_s"] for r in sel(engine="transformers", bench="decode")]
ref_pre = [r["tokens_per_s"] for r in sel(engine="transformers", bench="prefill")]
if ref_dec:
    print(f"transformers F32: decode {span(ref_dec)}, prefill {span(ref_pre)}")
    for d in DTYPES:
        dec = [r["tokens_per_s"] for r in sel(engine="liblora", bench="decode", dtype=d)]
        print(f"  {d}: decode {med(dec) / med(ref_dec):.2f}x transformers F32")
for a in ["off", "bf16"]:
    p = [r["tokens_per_s"] for r in sel(engine="pytorch+peft", bench="lora_train", autocast=a)]
    if p:
        bf = [r["tokens_per_s"] for r in sel(engine="liblora", bench="lora_train", dtype="bf16")]
        print(f"PyTorch+PEFT 4x256, autocast {a}: {span(p)}; liblora bf16 base {med(bf) / med(p):.2f}x")
eng = [r for r in rows if r.get("bench") == "engine" and r.get("case") in ("distinct_adapters", "shared_adapter")]
if eng:
    print("engine, 16 sequences (decode tok/s): " + "; ".join(
        f"{d} distinct {span([r['decode_tokens_per_s'] for r in eng if r['dtype'] == d and r['case'] == 'distinct_adapters'])}"
        f" shared {span([r['decode_tokens_per_s'] for r in eng if r['dtype'] == d and r['case'] == 'shared_adapter'])}"
        for d in DTYPES))
rss = {(r["dtype"], r["case"]): r["peak_rss_mib"] for r in sel(bench="rss")}
if rss:
    print("\npeak RSS of lora generate, MiB (ratio to f32 with the F32 cache)")
    print(f"{'dtype':6} {'2 + 4 tokens':>16} {'501 + 8 tokens':>16} {'501 + 8, bf16 cache':>20}")
    for d in DTYPES:
        cells = []
        for c, base in [("short", "short"), ("long", "long"), ("long_kv_bf16", "long")]:
            v, b = rss.get((d, c)), rss.get(("f32", base))
            cells.append(f"{v} ({v / b:.2f})" if v and b else "-")
        print(f"{d:6} {cells[0]:>16} {cells[1]:>16} {cells[2]:>20}")
PY
