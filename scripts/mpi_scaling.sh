#!/usr/bin/env bash
# Data-parallel scaling on one machine: 2 ranks × 1 thread against 1 rank ×
# 2 threads, LoRA r=8 on c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj of a GPT-2
# 124M-shaped model (random weights, the real GPT-2 tokenizer), global batch
# 4 × 256 tokens. The two set-ups alternate ROUNDS times in one run so that
# a noisy, shared machine affects both alike; read the ratio.
#   scripts/mpi_scaling.sh MODEL_DIR [ROUNDS] [STEPS]
# MODEL_DIR: a GPT-2 124M checkpoint directory with vocab.json + merges.txt
# (e.g. transformers' GPT2LMHeadModel(GPT2Config()).save_pretrained(...)).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?model directory}
rounds=${2:-2}
steps=${3:-6}
lora=$(realpath .build/release/lora-cli)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
find /usr/share/games/fortunes -type f ! -name "*.dat" ! -name "*.u8" -print0 | sort -z | xargs -0 cat > "$work/data.txt"
common=(train --model "$model" "$work/data.txt" --block-size 256 --r 8 --lora-alpha 16
        --target-modules c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj --max-steps "$steps" --lora-dropout 0 --save-steps 1000000)
rate() {  # median tokens/s of steps 2.. of a run's metrics
    python3 -c "import json,statistics,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(statistics.median(x['tokens_per_second'] for x in r[1:]))" "$1/metrics.jsonl"
}
for i in $(seq 1 "$rounds"); do
    "$lora" "${common[@]}" --batch-size 4 --threads 2 --output-dir "$work/one-$i" > "$work/one-$i.log"
    mpirun -np 2 --bind-to none "$lora" "${common[@]}" --batch-size 2 --threads 1 --output-dir "$work/two-$i" > "$work/two-$i.log"
    a=$(rate "$work/one-$i") b=$(rate "$work/two-$i")
    echo "round $i: 1 rank × 2 threads $a tok/s; 2 ranks × 1 thread $b tok/s; ratio $(python3 -c "print(f'{$b / $a:.3f}')")"
    grep -o "allreduce of.*" "$work/two-$i.log" | sed 's/^/    /'
done
