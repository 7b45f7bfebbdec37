#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/task_merge/: PEFT 0.21's add_weighted_adapter
task-arithmetic merges on the base gpt2-a, for the Swift TaskMergeTests.

  <case>/adapter_model.safetensors + adapter_config.json  PEFT's merged adapter
  expected.safetensors  logits.<case> [T, V] of `ids` with the merged adapter

Deterministic cases only (DARE's masks come from torch's RNG and are checked
statistically in Swift): ties (total and frequency), magnitude_prune, and
ties_svd (total and frequency) / magnitude_prune_svd to rank 3. Uses the adapters of
make_lora_fixtures.py (lora/all, lora/pattern) and make_combine_fixtures.py
(combine/all2). Needs torch, transformers, peft. PYTHONHASHSEED is pinned
(PEFT writes sets)."""
import os
import subprocess
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    sys.exit(subprocess.call([sys.executable] + sys.argv))

import shutil

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRATests", "Fixtures")

CASES = {
    "ties": (["all", "all2"], [0.6, 0.5], dict(combination_type="ties", density=0.5)),
    "ties_frequency": (["all", "all2"], [0.6, -0.5], dict(combination_type="ties", density=0.5, majority_sign_method="frequency")),
    "magnitude_prune": (["all", "all2"], [0.6, 0.5], dict(combination_type="magnitude_prune", density=0.3)),
    "ties_svd": (["all", "pattern"], [1.0, 0.5], dict(combination_type="ties_svd", svd_rank=3, density=0.5)),
    "magnitude_prune_svd": (["all", "pattern"], [1.0, 0.5], dict(combination_type="magnitude_prune_svd", svd_rank=3, density=0.4)),
    "ties_svd_frequency": (["all", "pattern"], [1.0, -0.5], dict(combination_type="ties_svd", svd_rank=3, density=0.5, majority_sign_method="frequency")),
}


def main():
    os.chdir(ROOT)
    out = "task_merge"
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    base = lambda: GPT2LMHeadModel.from_pretrained("gpt2-a", attn_implementation="eager").eval()
    paths = {"all": "lora/all", "pattern": "lora/pattern", "all2": "combine/all2"}
    ids = load_file("lora/expected.safetensors")["ids"].view(1, -1)
    exp = {}
    for case, (names, weights, kw) in CASES.items():
        model = PeftModel.from_pretrained(base(), paths[names[0]], adapter_name=names[0])
        for n in names[1:]:
            model.load_adapter(paths[n], adapter_name=n)
        model.add_weighted_adapter(names, weights, adapter_name=case, **kw)
        model.set_adapter(case)
        model.eval()
        with torch.no_grad():
            exp[f"logits.{case}"] = model(ids).logits[0].float().clone()
        model.save_pretrained(os.path.join(out, "tmp"), selected_adapters=[case])
        shutil.move(os.path.join(out, "tmp", case), os.path.join(out, case))
        shutil.rmtree(os.path.join(out, "tmp"))
        readme = os.path.join(out, case, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
    exp["ids"] = ids[0].clone()
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"), metadata={"format": "pt"})
    print("task-merge fixtures written to", os.path.normpath(os.path.join(ROOT, out)))


if __name__ == "__main__":
    main()
