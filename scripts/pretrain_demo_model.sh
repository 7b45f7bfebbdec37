#!/usr/bin/env bash
# Reproduces models/fortunes-gpt2: a 4-layer GPT-2 (n_embd 192, 6 heads,
# n_positions 256, byte-level vocabulary of 257) initialised as transformers
# does and pre-trained from scratch by this engine's full fine-tuning on
# Debian's fortunes (every file of the `fortunes` package but `startrek`,
# which the demo keeps for LoRA). About 20 minutes on 2 cores.
#
#   scripts/pretrain_demo_model.sh [output-dir]   (default models/fortunes-gpt2)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-models/fortunes-gpt2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash scripts/bootstrap.sh
swift build -c release --product lora-cli
lora=.build/release/lora-cli

files=()
for f in /usr/share/games/fortunes/*; do
    case "$f" in *.dat|*.u8|*/startrek) continue ;; esac
    [[ -f $f ]] && files+=("$f")
done
echo "pre-training on ${#files[@]} fortune files"

$lora init-model "$work/init" --n-layer 4 --n-embd 192 --n-head 6 --n-positions 256 --seed 1
$lora train --model "$work/init" --full-finetune "${files[@]}" \
    --output-dir "$work/run" --block-size 256 --batch-size 16 --num-train-epochs 3 \
    --learning-rate 1e-3 --lr-scheduler cosine --warmup-steps 100 --weight-decay 0.1 \
    --max-grad-norm 1.0 --validation-split 0.02 --eval-steps 200 --seed 1 --threads 2

mkdir -p "$out"
cp "$work/run/config.json" "$work/run/model.safetensors" "$work/run/vocab.json" "$work/run/merges.txt" "$out/"
cp "$work/run/loss.svg" "$out/pretraining-loss.svg"
cp "$work/run/metrics.jsonl" "$out/pretraining-metrics.jsonl"
echo "model written to $out"
