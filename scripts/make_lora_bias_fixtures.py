#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/lora_bias/ with PEFT + torch: a LoRA
adapter with lora_bias=True (PEFT's lora_B as nn.Linear(r, out, bias=True)),
for the Swift LoRABiasTests. Uses Fixtures/gpt2-a (make_fixtures.py).
Deterministic (PYTHONHASHSEED pinned).

  lora_bias/all/   r=4, alpha=8 on c_attn, c_proj and c_fc (all four Conv1D
                   types), A, B and B's bias random
  lora_bias/expected.safetensors:
      ids, logits.all, logits.half (the adapter at scale 0.5: set_scale)
      logits.merged (merge_and_unload); merged.<bias> c_attn's and mlp.c_proj's merged biases
      batch.ids, batch.labels; loss.all, grad.all.<saved key> (A, B and lora_B.bias)
      train.batch<k>.ids, train.losses, train.final.<saved key>: 10 AdamW steps
      (warmup 2 + cosine, lr 5e-3, clip 1; weight decay 0.05 except the
      biases, as transformers' Trainer groups them)
"""
import os
import shutil

from peft_fixtures import ROOT, base, pin_hash_seed, save_expected, saved_key, train_adamw

pin_hash_seed()

import torch
from peft import LoraConfig, get_peft_model

OUT = os.path.join(ROOT, "lora_bias")

CONFIGS = {"all": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], lora_bias=True)}


def make(name, seed):
    model = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **CONFIGS[name]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def main():
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    g = torch.Generator().manual_seed(41)
    V = 101
    exp = {}
    ids = torch.randint(0, V, (1, 13), generator=g)
    exp["ids"] = ids[0].clone()
    bids = torch.randint(0, V, (3, 10), generator=g)
    labels = bids.clone()
    labels[2, 5] = -100
    exp["batch.ids"] = bids
    exp["batch.labels"] = labels

    model = make("all", 400)
    model.save_pretrained(os.path.join(OUT, "all"))
    with torch.no_grad():
        exp["logits.all"] = model(ids).logits[0].clone()
    model.zero_grad()
    out = model(input_ids=bids, labels=labels)
    out.loss.backward()
    exp["loss.all"] = out.loss.detach().reshape(1).clone()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.endswith("lora_B.default.bias") for n in trained), trained
    for pname, p in model.named_parameters():
        if p.requires_grad:
            exp[f"grad.all.{saved_key(pname)}"] = p.grad.detach().clone()
    for module in model.modules():
        if hasattr(module, "set_scale") and hasattr(module, "lora_B"):
            module.set_scale("default", 0.5)
    with torch.no_grad():
        exp["logits.half"] = model(ids).logits[0].clone()
    for module in model.modules():
        if hasattr(module, "set_scale") and hasattr(module, "lora_B"):
            module.set_scale("default", 1.0)
    merged = model.merge_and_unload()
    with torch.no_grad():
        exp["logits.merged"] = merged(ids).logits[0].clone()
    for l in range(2):
        for mod in ("attn.c_attn", "mlp.c_proj"):
            b = f"transformer.h.{l}.{mod}.bias"
            exp[f"merged.{b}"] = merged.state_dict()[b].clone()

    model = make("all", 400)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".bias")]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=5e-3, betas=(0.9, 0.999), eps=1e-8)
    train_adamw(model, opt, decay + no_decay, g, V, exp)

    save_expected(exp, OUT, CONFIGS)
    print("lora_bias fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
