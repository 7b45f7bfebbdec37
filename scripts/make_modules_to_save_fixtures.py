#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/modules_to_save/ with PEFT + torch:
LoRA adapters whose modules_to_save (PEFT's ModulesToSaveWrapper) hold
LayerNorms trained in full, for the Swift ModulesToSaveTests. Uses
Fixtures/gpt2-a (make_fixtures.py). Deterministic (PYTHONHASHSEED pinned).

  modules_to_save/ln/    r=4 on c_attn and mlp.c_fc; modules_to_save
                         ["ln_f", "h.1.ln_1", "ln_2"] (ln_f, h.1.ln_1, h.0.ln_2,
                         h.1.ln_2), the copies perturbed away from the base
  modules_to_save/dora/  DoRA on c_attn with modules_to_save ["ln_f"]
  modules_to_save/expected.safetensors:
      ids, logits.<name>, logits.merged (ln merged by merge_and_unload)
      batch.ids, batch.labels; loss.ln, grad.ln.<saved key> (LoRA and LayerNorm tensors)
      train.batch<k>.ids, train.losses, train.final.<saved key>: 10 AdamW steps
      on ln (warmup 2 + cosine, lr 5e-3, clip 1; weight decay 0.05 except the
      LayerNorms, as transformers' Trainer groups them)
"""
import os
import subprocess
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    sys.exit(subprocess.call([sys.executable] + sys.argv))

import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import GPT2LMHeadModel, get_cosine_schedule_with_warmup

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRATests", "Fixtures")
OUT = os.path.join(ROOT, "modules_to_save")
BASE = "gpt2-a"

CONFIGS = {
    "ln": dict(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"], modules_to_save=["ln_f", "h.1.ln_1", "ln_2"]),
    "dora": dict(r=4, lora_alpha=8, target_modules=["c_attn"], use_dora=True, modules_to_save=["ln_f"]),
}


def base():
    return GPT2LMHeadModel.from_pretrained(BASE, attn_implementation="eager").eval()


def saved_key(name):
    # parameter name -> the key PEFT saves
    name = name.replace(".modules_to_save.default", "")
    name = name.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
    return name.replace(".default", "")


def make(name, seed):
    model = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **CONFIGS[name]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "modules_to_save" in pname or "lora_magnitude_vector" in pname:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif "lora_" in pname:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def main():
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    g = torch.Generator().manual_seed(31)
    V = 101
    exp = {}
    ids = torch.randint(0, V, (1, 13), generator=g)
    exp["ids"] = ids[0].clone()
    bids = torch.randint(0, V, (3, 10), generator=g)
    labels = bids.clone()
    labels[1, 4] = -100
    exp["batch.ids"] = bids
    exp["batch.labels"] = labels

    for i, name in enumerate(CONFIGS):
        model = make(name, 300 + i)
        model.save_pretrained(os.path.join(OUT, name))
        with torch.no_grad():
            exp[f"logits.{name}"] = model(ids).logits[0].clone()
        if name == "ln":
            for pname, p in model.named_parameters():
                if p.requires_grad:
                    print("trained:", pname, "->", saved_key(pname))
            model.zero_grad()
            out = model(input_ids=bids, labels=labels)
            out.loss.backward()
            exp["loss.ln"] = out.loss.detach().reshape(1).clone()
            for pname, p in model.named_parameters():
                if p.requires_grad:
                    exp[f"grad.ln.{saved_key(pname)}"] = p.grad.detach().clone()
            merged = model.merge_and_unload()
            with torch.no_grad():
                exp["logits.merged"] = merged(ids).logits[0].clone()

    model = make("ln", 300)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=5e-3, betas=(0.9, 0.999), eps=1e-8)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=10)
    losses = []
    for k in range(10):
        batch = torch.randint(0, V, (2, 12), generator=g)
        exp[f"train.batch{k}.ids"] = batch
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(decay + no_decay, max_norm=1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    exp["train.losses"] = torch.tensor(losses, dtype=torch.float64)
    for pname, p in model.named_parameters():
        if p.requires_grad:
            exp[f"train.final.{saved_key(pname)}"] = p.detach().clone()

    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})
    for name in CONFIGS:
        readme = os.path.join(OUT, name, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
    print("modules_to_save fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
