#!/usr/bin/env bash
# Data-parallel training under Open MPI (`mpirun -np N lora train`):
# equivalence with one process, the sharding rule for uneven data, resume
# (same and different rank counts), full fine-tuning and the faults of issue 14.
#   Tests/mpi/run.sh [path to lora-cli]
# Every mpirun runs under `timeout`, so a hang fails the test instead of CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
lora=$(realpath "${1:-.build/release/lora-cli}")
command -v mpirun >/dev/null || { echo "mpi test: mpirun missing (scripts/bootstrap.sh installs openmpi-bin)" >&2; exit 1; }
# As root, Open MPI refuses to start without these; more ranks than cores need
# oversubscription; containers without ptrace rights need the single-copy path off.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
mpirun=(timeout -k 5 120 mpirun -np)
model=Tests/LoRATests/Fixtures/gpt2-tok
work=$(mktemp -d)
trap '[[ -n ${KEEP:-} ]] || rm -rf "$work"' EXIT; echo "work: $work"
passed=0 failed=0
pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
compare() {  # name, dir a, dir b, compare.py options
    local name=$1; shift
    if out=$(python3 Tests/mpi/compare.py "$@" 2>&1); then pass "$name: $out"; else fail "$name: $out"; fi
}

# Documents of uneven length (JSONL records are not packed: padded batches).
python3 - "$work" <<'PY'
import json, random, sys
r = random.Random(5)
words = "the captain said that logic is the beginning of wisdom not the end space final frontier".split()
with open(sys.argv[1] + "/data.jsonl", "w") as f:
    for i in range(40):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(r.randint(3, 14)))}) + "\n")
with open(sys.argv[1] + "/seven.jsonl", "w") as f:   # 7 examples: not divisible by 3
    for i in range(7):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(4 + i))}) + "\n")
PY
common=(train --model "$model" --block-size 32 --r 4 --lora-alpha 8 --learning-rate 1e-3 --seed 3 --threads 1)
run1() { local out=$1; shift; timeout -k 5 120 "$lora" "${common[@]}" "$@" --output-dir "$work/$out" > "$work/$out.log" 2>&1; }
runN() { local n=$1 out=$2; shift 2; "${mpirun[@]}" "$n" "$lora" "${common[@]}" "$@" --output-dir "$work/$out" > "$work/$out.log" 2>&1; }

# 1. 2 ranks × batch 2 = 1 rank × batch 4 (loss at every step and final adapter).
d=("$work/data.jsonl" --max-steps 8 --lora-dropout 0)
run1 one "${d[@]}" --batch-size 4 && runN 2 two "${d[@]}" --batch-size 2 && compare "2x2 = 1x4" "$work/one" "$work/two" --steps 8 \
    || fail "2x2 = 1x4: a run failed ($(tail -2 "$work/two.log"))"
# 2. With gradient accumulation 2.
run1 one-acc "${d[@]}" --batch-size 4 --gradient-accumulation-steps 2 && runN 2 two-acc "${d[@]}" --batch-size 2 --gradient-accumulation-steps 2 \
    && compare "2x2 = 1x4, accumulation 2" "$work/one-acc" "$work/two-acc" --steps 8 || fail "accumulation: a run failed"
# 3. Clipping that binds at every step (the norm is the global one).
run1 one-clip "${d[@]}" --batch-size 4 --max-grad-norm 0.01 && runN 2 two-clip "${d[@]}" --batch-size 2 --max-grad-norm 0.01 \
    && compare "2x2 = 1x4, clipping at 0.01" "$work/one-clip" "$work/two-clip" --steps 8 --min-grad-norm 0.01 || fail "clipping: a run failed"
# 4. LoRA dropout 0.1 and GPT-2's own dropouts: masks are indexed by the example's place in the global batch, so they match one process.
dd=("$work/data.jsonl" --max-steps 8 --lora-dropout 0.1 --model-dropout)
run1 one-drop "${dd[@]}" --batch-size 4 && runN 2 two-drop "${dd[@]}" --batch-size 2 \
    && compare "2x2 = 1x4, LoRA dropout 0.1 + --model-dropout" "$work/one-drop" "$work/two-drop" --steps 8 || fail "dropout: a run failed"
# 5. 3 ranks × 1 on 7 examples (not divisible by 3) over 3 epochs = 1 rank × 3: the stream rule.
s=("$work/seven.jsonl" --max-steps 7 --lora-dropout 0.1 --model-dropout)
run1 one-seven "${s[@]}" --batch-size 3 && runN 3 three-seven "${s[@]}" --batch-size 1 \
    && compare "3x1 = 1x3 on 7 examples" "$work/one-seven" "$work/three-seven" --steps 7 || fail "3 ranks: a run failed ($(tail -2 "$work/three-seven.log"))"
# 6. Full fine-tuning.
run1 one-full "${d[@]}" --batch-size 4 --full-finetune --learning-rate 1e-3 && runN 2 two-full "${d[@]}" --batch-size 2 --full-finetune --learning-rate 1e-3 \
    && compare "full fine-tuning 2x2 = 1x4" "$work/one-full" "$work/two-full" --steps 8 || fail "full fine-tuning: a run failed"
# 7. Validation averaged over ranks (the split's batches are shared out, sums reduced): same value as one process.
# Training drops (LoRA and GPT-2's dropouts); evaluation does not.
v=("$work/data.jsonl" --max-steps 4 --lora-dropout 0.1 --model-dropout --validation-split 0.3 --eval-steps 2)
run1 one-val "${v[@]}" --batch-size 4 && runN 2 two-val "${v[@]}" --batch-size 2 && python3 - "$work" <<'PY' && pass "validation loss 2x2 = 1x4" || fail "validation loss differs"
import json, sys
def vals(d): return [json.loads(l)["val_loss"] for l in open(f"{sys.argv[1]}/{d}/metrics.jsonl") if "val_loss" in l]
a, b = vals("one-val"), vals("two-val")
# Three points: before training (step 0), steps 2 and 4.
assert len(a) == len(b) == 3 and max(abs(x - y) for x, y in zip(a, b)) < 1e-6, (a, b)
PY
# 8. Resume: 2 ranks checkpoint at step 4 of 8; resumed with 2 ranks (bit-exact) and with 1 rank × 4 (same global batch).
rr=("$work/data.jsonl" --max-steps 8 --lora-dropout 0.1 --save-steps 4 --save-total-limit 3)
if runN 2 full2 "${rr[@]}" --batch-size 2; then
    for k in same other; do mkdir -p "$work/res-$k/checkpoints"; cp -r "$work/full2/checkpoints/checkpoint-4" "$work/res-$k/checkpoints/"; done
    runN 2 res-same "${rr[@]}" --batch-size 2 --resume && cmp -s "$work/full2/adapter_model.safetensors" "$work/res-same/adapter_model.safetensors" \
        && pass "resume with 2 ranks: adapter byte-identical" || fail "resume with 2 ranks differs ($(tail -2 "$work/res-same.log"))"
    run1 res-other "${rr[@]}" --batch-size 4 --resume && python3 Tests/mpi/compare.py "$work/full2" "$work/res-other" > /dev/null 2>&1 || true
    # Only steps 5..8 are in the resumed run's metrics: compare the adapters.
    python3 - "$work" <<'PY' && pass "resume 2x2 checkpoint with 1 rank x 4: adapter within 1e-5" || fail "resume with another rank count differs"
import sys, numpy as np
from safetensors.numpy import load_file
a, b = load_file(f"{sys.argv[1]}/full2/adapter_model.safetensors"), load_file(f"{sys.argv[1]}/res-other/adapter_model.safetensors")
assert sorted(a) == sorted(b) and max(float(np.max(np.abs(a[k] - b[k]))) for k in a) < 1e-5
PY
    run1 res-bad "${rr[@]}" --batch-size 2 --resume -o /dev/null 2>/dev/null || true
    mkdir -p "$work/res-bad/checkpoints"; cp -r "$work/full2/checkpoints/checkpoint-4" "$work/res-bad/checkpoints/"
    if run1 res-bad "${rr[@]}" --batch-size 2 --resume; then fail "a 2x2 checkpoint resumed with 1 rank x 2 (another global batch)"
    elif grep -q "global batch" "$work/res-bad.log"; then pass "another global batch is refused: $(grep -o 'other training settings.*' "$work/res-bad.log" | cut -c1-80)..."
    else fail "resume refusal without a clear message: $(cat "$work/res-bad.log")"; fi
else fail "resume: the 2-rank run failed"; fi

# Faults. 9. --distributed mpi without mpirun.
if timeout 30 "$lora" "${common[@]}" "$work/data.jsonl" --max-steps 1 --distributed mpi --output-dir "$work/nompi" > "$work/nompi.log" 2>&1; then
    fail "--distributed mpi without mpirun succeeded"
elif grep -q "not started by mpirun" "$work/nompi.log"; then pass "--distributed mpi without mpirun: $(cat "$work/nompi.log")"
else fail "--distributed mpi without mpirun: $(cat "$work/nompi.log")"; fi
# 10. Ranks started with different settings (a different seed on rank 1): every rank stops with the reason.
mpmd() {  # out, args of rank 0 ;; args of rank 1
    local out=$1; shift; local a=() b=(); while [[ $1 != ";;" ]]; do a+=("$1"); shift; done; shift; b=("$@")
    timeout -k 5 60 mpirun -np 1 "$lora" "${common[@]}" "${a[@]}" --output-dir "$work/$out" : -np 1 "$lora" "${common[@]}" "${b[@]}" --output-dir "$work/$out" > "$work/$out.log" 2>&1
}
t0=$SECONDS
if mpmd seeds "$work/data.jsonl" --max-steps 2 --seed 1 ";;" "$work/data.jsonl" --max-steps 2 --seed 2; then fail "different seeds were not detected"
elif [[ $(grep -c "were started with different" "$work/seeds.log") == 2 ]]; then pass "different seeds: both ranks stop ($((SECONDS - t0)) s): $(grep -m1 -o 'rank 0 of 2:.*' "$work/seeds.log" | cut -c1-120)..."
else fail "different seeds: $(cat "$work/seeds.log")"; fi
if mpmd models "$work/data.jsonl" --max-steps 2 ";;" "$work/data.jsonl" --max-steps 2 --r 8; then fail "different adapter ranks were not detected"
elif [[ $(grep -c "were started with different" "$work/models.log") == 2 ]]; then pass "different adapter configs: both ranks stop"
else fail "different adapter configs: $(cat "$work/models.log")"; fi
# 11. A rank that cannot read its data: every rank stops with a message, no hang.
t0=$SECONDS
if mpmd nodata "$work/data.jsonl" --max-steps 2 ";;" "$work/missing.jsonl" --max-steps 2; then fail "a missing data file on rank 1 was not detected"
elif grep -q "rank 1 of 2: .*missing.jsonl" "$work/nodata.log" && grep -q "rank 0 of 2: rank 1 failed to read its data" "$work/nodata.log"; then
    pass "missing data on rank 1: every rank stops ($((SECONDS - t0)) s)"
else fail "missing data on rank 1: $(cat "$work/nodata.log")"; fi
# 11b. --resume where rank 1 has no checkpoint (no shared file system): every rank stops, naming it.
if [[ -d $work/full2/checkpoints ]]; then
    mkdir -p "$work/ck0/checkpoints" "$work/ck1"; cp -r "$work/full2/checkpoints/checkpoint-4" "$work/ck0/checkpoints/"
    if timeout -k 5 60 mpirun -np 1 "$lora" "${common[@]}" "${rr[@]}" --batch-size 2 --resume --output-dir "$work/ck0" \
            : -np 1 "$lora" "${common[@]}" "${rr[@]}" --batch-size 2 --resume --output-dir "$work/ck1" > "$work/ck.log" 2>&1; then
        fail "a rank without the checkpoint was not detected"
    elif grep -q "rank 1 of 2: --resume: no checkpoint" "$work/ck.log" && grep -q "rank 1 failed to read its checkpoint" "$work/ck.log"; then
        pass "--resume with the checkpoint missing on rank 1: every rank stops"
    else fail "checkpoint missing on rank 1: $(cat "$work/ck.log")"; fi
fi
# 12. SIGKILL of one rank: the job ends within the bound, the checkpoint resumes to the uninterrupted result.
k=("$work/data.jsonl" --max-steps 400 --lora-dropout 0.1 --save-steps 2 --save-total-limit 2 --batch-size 2 --block-size 32)
runN 2 kill-straight "${k[@]}" || fail "SIGKILL: the uninterrupted run failed"
"${mpirun[@]}" 2 "$lora" "${common[@]}" "${k[@]}" --output-dir "$work/kill" > "$work/kill.log" 2>&1 &
mp=$!
# Wait for a checkpoint at step 20 or later: with --save-total-limit 2 any one
# checkpoint lives only a few steps, so polling for checkpoint-20 itself can miss it.
newest() { ls "$work/kill/checkpoints" 2>/dev/null | sed -n 's/^checkpoint-\([0-9]*\)$/\1/p' | sort -n | tail -1; }
for _ in $(seq 1 600); do [[ $(newest) -ge 20 ]] 2>/dev/null && break; sleep 0.05; done
# $mp is timeout; its child is mpirun, whose children are the ranks.
launcher=$(pgrep -P "$mp" | head -1 || true)
victim=$([[ -n $launcher ]] && pgrep -P "$launcher" | tail -1 || true)
if [[ -z $victim ]]; then fail "SIGKILL: no rank process found"; else
    t0=$(date +%s.%N); kill -9 "$victim"; rc=0; wait "$mp" || rc=$?; t1=$(date +%s.%N)
    secs=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
    if [[ $rc != 0 ]] && python3 -c "import sys; sys.exit(0 if $t1 - $t0 < 15 else 1)"; then
        pass "SIGKILL of a rank: job ended with status $rc after $secs s; $(grep -m1 -o 'rank 0: stopped by the MPI launcher' "$work/kill.log" || grep -m1 -i 'killed' "$work/kill.log")"
    else fail "SIGKILL of a rank: status $rc after $secs s"; fi
    if runN 2 kill "${k[@]}" --resume && cmp -s "$work/kill-straight/adapter_model.safetensors" "$work/kill/adapter_model.safetensors"; then
        pass "after the SIGKILL, --resume from $(grep -o 'resumed from [^ ]*' "$work/kill.log" | sed 's|.*/||') gives the uninterrupted run's adapter (byte-identical)"
    else fail "resume after SIGKILL: $(tail -3 "$work/kill.log")"; fi
fi
echo "mpi test: $passed passed, $failed failed"
[[ $failed == 0 ]]
