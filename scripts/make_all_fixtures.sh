#!/usr/bin/env bash
# Regenerates every fixture under Tests/LoRATests/Fixtures, in dependency order,
# with the reference versions pinned in scripts/requirements-fixtures.txt:
#   1. make_tokenizer_fixtures.py  tokenizer/ (a byte-level BPE + transformers' ids)
#   2. make_fixtures.py            gpt2-a/-b/-tok models (gpt2-tok uses 1.), expected logits
#   3. make_lora_fixtures.py       lora/: PEFT adapters on gpt2-a, logits, gradients, AdamW
#   4. make_svd_fixtures.py        svd/: singular values of the lora/ adapters' deltas
#   5. make_combine_fixtures.py    combine/: add_weighted_adapter of the lora/ adapters
#   6. make_pissa_fixtures.py      pissa/: PEFT's PiSSA/OLoRA adapters on gpt2-a
#   6b. make_dora_fixtures.py      dora/: PEFT DoRA adapters (use_dora), logits, gradients, AdamW, merge
#   6c. make_modules_to_save_fixtures.py  modules_to_save/: LayerNorms trained beside LoRA (and DoRA)
#   6d. make_embedding_fixtures.py embedding/: LoRA on wte; PEFT's targeting of layer/pattern combinations
#   6e. make_lora_bias_fixtures.py lora_bias/: lora_bias (B with a bias), logits, gradients, AdamW, merge
#   6f. make_model_dropout_fixtures.py model_dropout/: GPT-2's own dropouts in training (liblora's masks), gradients, AdamW
#   7. make_lowp_fixtures.py       lowp/: gpt2-a with bf16/f16/q8_0-rounded matrices, logits, PEFT training (needs 2., 3.)
#   8. make_merge_fixtures.py      merge/: `lora merge` of lora/all (needs a release lora-cli)
# The inputs (models, adapters, tokenizer files) come out byte-identical;
# reference outputs computed by torch can differ in the last bits between
# machines and thread counts (a run here on 2026-11-29: up to 1.7e-6 on GPT-2
# logits, 9.1e-6 lora/, 2.1e-5 combine/, 5.3e-5 pissa/, all inside the tests'
# tolerances). `git status` afterwards shows what changed; commit regenerated
# outputs only with the change that needs them.
#   scripts/make_all_fixtures.sh               check the pins, then run all
#   scripts/make_all_fixtures.sh --venv DIR    first make a venv in DIR and pip install the pins
#   ANY_VERSION=1 scripts/make_all_fixtures.sh run with whatever versions are installed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ${1:-} == --venv ]]; then
    "$PY" -m venv "$2"
    "$2/bin/python" -m pip install --quiet -r scripts/requirements-fixtures.txt
    PY="$2/bin/python"
fi
if [[ ${ANY_VERSION:-0} != 1 ]]; then
    "$PY" - <<'PY'
import re, sys
from importlib.metadata import version, PackageNotFoundError
bad = []
for line in open("scripts/requirements-fixtures.txt"):
    m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
    if not m:
        continue
    name, want = m.groups()
    try:
        got = version(name)
    except PackageNotFoundError:
        got = "missing"
    if got.split("+")[0] != want:
        bad.append(f"{name} {got} (pinned {want})")
if bad:
    sys.exit("make_all_fixtures: reference versions differ: " + ", ".join(bad)
             + "\n  pip install -r scripts/requirements-fixtures.txt, or --venv DIR, or ANY_VERSION=1")
print("make_all_fixtures: reference versions as pinned")
PY
fi
export PATH="/opt/swift/usr/bin:$PATH"
for s in make_tokenizer_fixtures make_fixtures make_lora_fixtures make_svd_fixtures make_combine_fixtures make_pissa_fixtures \
    make_dora_fixtures make_modules_to_save_fixtures make_embedding_fixtures make_lora_bias_fixtures make_model_dropout_fixtures \
    make_lowp_fixtures; do
    echo "== $s.py"
    "$PY" "scripts/$s.py"
done
echo "== make_merge_fixtures.py (release lora-cli)"
swift build -c release --product lora-cli
"$PY" scripts/make_merge_fixtures.py
git status --short -- Tests/LoRATests/Fixtures | head -n 20
echo "make_all_fixtures: done (files listed above changed)"
