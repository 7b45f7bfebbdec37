#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/combine/: PEFT 0.21's add_weighted_adapter
results on the base gpt2-a, for the Swift combination tests.

  <case>/adapter_model.safetensors + adapter_config.json  PEFT's combined adapter
  expected.safetensors  logits.<case> [T, V] of `ids` with the combined adapter

Cases: cat of `all` (weight 0.7) and `layers` (-0.4, other targets and rank);
linear of `all` (0.6) and `all2` (0.5, same targets and rank); svd of `all` (1.0)
and `pattern` (0.5) to rank 3; the same with svd_clamp 0.9. Needs torch,
transformers, peft; uses the adapters written by make_lora_fixtures.py plus
`all2`, made here. PYTHONHASHSEED is pinned (PEFT writes sets)."""
import os
import subprocess
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    sys.exit(subprocess.call([sys.executable] + sys.argv))

import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRATests", "Fixtures")


def main():
    os.chdir(ROOT)
    out = "combine"
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    base = lambda: GPT2LMHeadModel.from_pretrained("gpt2-a", attn_implementation="eager").eval()
    # all2: the same targets and rank as lora/all, other random weights.
    m = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"]))
    g = torch.Generator().manual_seed(321)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    m.save_pretrained(os.path.join(out, "all2"))
    os.remove(os.path.join(out, "all2", "README.md"))

    ids = load_file("lora/expected.safetensors")["ids"].view(1, -1)
    exp = {}
    cases = {
        "cat": (["all", "layers"], [0.7, -0.4], dict(combination_type="cat")),
        "linear": (["all", "all2"], [0.6, 0.5], dict(combination_type="linear")),
        "svd": (["all", "pattern"], [1.0, 0.5], dict(combination_type="svd", svd_rank=3)),
        "svd_clamp": (["all", "pattern"], [1.0, 0.5], dict(combination_type="svd", svd_rank=3, svd_clamp=0.9)),
    }
    paths = {"all": "lora/all", "layers": "lora/layers", "pattern": "lora/pattern", "all2": os.path.join(out, "all2")}
    for case, (names, weights, kw) in cases.items():
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
    print("combination fixtures written to", os.path.normpath(os.path.join(ROOT, out)))


if __name__ == "__main__":
    main()
