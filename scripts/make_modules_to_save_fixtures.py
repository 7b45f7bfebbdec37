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
import shutil

from peft_fixtures import ROOT, base, pin_hash_seed, save_expected, saved_key, train_adamw

pin_hash_seed()

import torch
from peft import LoraConfig, get_peft_model

OUT = os.path.join(ROOT, "modules_to_save")

CONFIGS = {
    "ln": dict(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"], modules_to_save=["ln_f", "h.1.ln_1", "ln_2"]),
    "dora": dict(r=4, lora_alpha=8, target_modules=["c_attn"], use_dora=True, modules_to_save=["ln_f"]),
}


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
    train_adamw(model, opt, decay + no_decay, g, V, exp)

    save_expected(exp, OUT, CONFIGS)
    print("modules_to_save fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
