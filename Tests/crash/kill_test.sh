#!/usr/bin/env bash
# Crash safety: a training run checkpointing every step is killed with SIGKILL
# at random moments (also while checkpoints are written), then resumed, many
# times. After each kill the newest checkpoint must load, and the final
# adapter must be byte-identical to an uninterrupted run's.
#   Tests/crash/kill_test.sh [path to lora-cli] [kills]
set -euo pipefail
cd "$(dirname "$0")/../.."
lora=${1:-.build/release/lora-cli}
kills=${2:-25}
model=Tests/LoRATests/Fixtures/gpt2-tok
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 80); do echo "Line $i: the quick brown fox jumps over the lazy dog again and again."; echo "%"; done > "$work/data.txt"
args=(train --model "$model" "$work/data.txt" --max-steps 600 --block-size 32 --batch-size 2 --r 4 --learning-rate 1e-2
      --lora-dropout 0.1 --save-steps 1 --save-total-limit 2 --seed 7)

"$lora" "${args[@]}" --output-dir "$work/straight" > /dev/null
passed=0 failed=0 steps=""
"$lora" "${args[@]}" --output-dir "$work/killed" > /dev/null 2>&1 &
pid=$!
for k in $(seq 1 "$kills"); do
    sleep "0.$(( RANDOM % 9 + 1 ))$(( RANDOM % 10 ))"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    latest=$(ls -d "$work/killed/checkpoints"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1 || true)
    if [[ -n $latest ]]; then
        if "$lora" inspect "$latest" > /dev/null 2>&1; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $latest does not load"; fi
        steps+=" ${latest##*-}"
        "$lora" "${args[@]}" --output-dir "$work/killed" --resume > /dev/null 2>&1 &
    else
        # Killed before its first checkpoint: start again (the folder already holds the logs).
        "$lora" "${args[@]}" --output-dir "$work/killed" --overwrite-output-dir > /dev/null 2>&1 &
    fi
    pid=$!
done
wait "$pid"
if cmp -s "$work/straight/adapter_model.safetensors" "$work/killed/adapter_model.safetensors"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: the resumed run's adapter differs from the uninterrupted run's"
fi
echo "crash test: $kills kills; newest checkpoint at each kill:$steps"
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
