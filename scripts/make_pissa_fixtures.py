#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/pissa/: PiSSA adapters made by PEFT 0.21 on
the base gpt2-a, and their conversion to plain LoRA for the original base
(save_pretrained(path_initial_model_for_weight_conversion=...)).

  <case>/initial/    the adapter right after init_lora_weights="pissa" (A0, B0;
                     the config keeps "pissa", as PEFT saves it)
  <case>/trained/    A and B after a deterministic perturbation (standing in
                     for training, so the conversion is not trivially zero)
  <case>/converted/  PEFT's converted adapter: r and lora_alpha doubled
                     (alpha·√2 with rsLoRA), A' = [A; A0], B' = [B, -B0],
                     init_lora_weights true
  expected.safetensors:
      ids                     the token ids (those of lora/expected.safetensors)
      logits.base             the original base
      logits.<case>.init      the PiSSA model at step 0 (residual base + A0, B0)
      logits.<case>.trained   residual base + trained adapter
      logits.<case>.converted original base + PEFT's converted adapter

Cases: pissa (r=4, alpha=8, c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj);
pissa_patterns (rank_pattern/alpha_pattern); pissa_rslora (r=2, rsLoRA).
OLoRA is not here: PEFT 0.21's olora_init ignores fan_in_fan_out and fails or
is wrong on GPT-2's Conv1D. Instead

  make_pissa_fixtures.py --check-olora DIR

loads an OLoRA adapter converted by liblora (DIR holds adapter_config.json,
adapter_model.safetensors and expected.safetensors with `ids` and `logits`,
liblora's logits of the residual base + trained adapter; the Swift test
PiSSATests writes it when LORA_EXPORT_OLORA=DIR is set) into PEFT on the
original base and compares the logits.

Needs torch, transformers, peft. PYTHONHASHSEED is pinned (PEFT writes sets)."""
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
OUT = "pissa"    # relative to ROOT (the script runs there), so configs carry no machine path
BASE = "gpt2-a"

CASES = {
    "pissa": dict(r=4, lora_alpha=8, target_modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
    "pissa_patterns": dict(r=4, lora_alpha=8, target_modules=["c_attn", "attn.c_proj"],
                           rank_pattern={"attn.c_proj": 2}, alpha_pattern={"h.1.attn.c_attn": 6}),
    "pissa_rslora": dict(r=2, lora_alpha=8, use_rslora=True, target_modules=["c_attn"]),
}


def base():
    return GPT2LMHeadModel.from_pretrained(BASE, attn_implementation="eager").eval()


def save(model, path, **kw):
    model.save_pretrained(path, **kw)
    readme = os.path.join(path, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def main():
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    tmp = os.path.join(OUT, "tmp")
    ids = load_file("lora/expected.safetensors")["ids"].view(1, -1)
    exp = {"ids": ids[0].clone()}
    with torch.no_grad():
        exp["logits.base"] = base()(ids).logits[0].float().clone()
    g = torch.Generator().manual_seed(2024)
    for case, kw in CASES.items():
        model = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, init_lora_weights="pissa", **kw))
        model.eval()
        with torch.no_grad():
            exp[f"logits.{case}.init"] = model(ids).logits[0].float().clone()
        save(model, os.path.join(tmp, "initial"))
        shutil.copytree(os.path.join(tmp, "initial"), os.path.join(OUT, case, "initial"))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
            exp[f"logits.{case}.trained"] = model(ids).logits[0].float().clone()
        save(model, os.path.join(OUT, case, "trained"))
        save(model, os.path.join(tmp, "converted"), path_initial_model_for_weight_conversion=os.path.join(tmp, "initial"))
        shutil.move(os.path.join(tmp, "converted"), os.path.join(OUT, case, "converted"))
        shutil.rmtree(tmp)
        conv = PeftModel.from_pretrained(base(), os.path.join(OUT, case, "converted")).eval()
        with torch.no_grad():
            exp[f"logits.{case}.converted"] = conv(ids).logits[0].float().clone()
        d = (exp[f"logits.{case}.converted"] - exp[f"logits.{case}.trained"]).abs().max().item()
        d0 = (exp[f"logits.{case}.init"] - exp["logits.base"]).abs().max().item()
        print(f"{case}: |init - base| = {d0:.2e}, |converted on base - trained on residual| = {d:.2e}")
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})
    print("PiSSA fixtures written to", os.path.normpath(os.path.join(ROOT, OUT)))


def check_olora(directory):
    directory = os.path.abspath(directory)
    os.chdir(ROOT)
    ours = load_file(os.path.join(directory, "expected.safetensors"))
    ids = ours["ids"].view(1, -1)
    model = PeftModel.from_pretrained(base(), directory).eval()
    with torch.no_grad():
        peft_logits = model(ids).logits[0].float()
        base_logits = base()(ids).logits[0].float()
    d = (peft_logits - ours["logits"]).abs().max().item()
    moved = (ours["logits"] - base_logits).abs().max().item()
    print(f"OLoRA adapter converted by liblora, loaded by PEFT on the original base:")
    print(f"  max |PEFT logits - liblora residual+adapter logits| = {d:.2e} (the adapter moves the logits by up to {moved:.2e})")
    return 0 if d < 1e-4 else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-olora":
        sys.exit(check_olora(sys.argv[2]))
    main()
