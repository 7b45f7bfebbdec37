#!/usr/bin/env python3
"""Writes the LoRA fixtures under Tests/LoRATests/Fixtures/lora/ with PEFT + torch.

Needs torch, transformers, peft (pip install torch transformers peft); the
Swift tests only read the files. Uses the base model Fixtures/gpt2-a written by
make_fixtures.py. Deterministic (PYTHONHASHSEED is pinned for PEFT's
set-ordered target_modules).

  lora/all/        PEFT adapter on all four Conv1D types (target c_attn, c_proj,
                   c_fc), r=4, alpha=8, random non-zero A and B.
  lora/pattern/    rsLoRA, non-integer alpha 6.5, rank_pattern and alpha_pattern.
  lora/layers/     regex-free targeting with layers_to_transform=[1].
  lora/expected.safetensors:
      logits.<name>          logits [T, V] of `ids` with that adapter alone
      logits.both            with `all` and `pattern` active together
      batch.ids / batch.labels   an uneven batch (right padded, -100 labels)
      loss.<name>, grad.<name>.<PEFT key>   loss and gradient of every LoRA tensor
      train.batch<k>.ids     20 batches; train.losses [20]; train.lr [20]
      train.final.<PEFT key> the `all` adapter after 20 AdamW steps
"""
import os
import shutil

from peft_fixtures import ROOT, base, pin_hash_seed, save_expected, saved_key, train_adamw, uneven_batch

pin_hash_seed()

import torch
from peft import LoraConfig, PeftModel, get_peft_model

OUT = os.path.join(ROOT, "lora")


def randomize_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


CONFIGS = {
    "all": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"]),
    "pattern": dict(r=4, lora_alpha=6.5, use_rslora=True, target_modules=["c_attn", "attn.c_proj", "mlp.c_fc"],
                    rank_pattern={"h.1.attn.c_attn": 2, "mlp.c_fc": 6}, alpha_pattern={"attn.c_proj": 3}),
    "layers": dict(r=3, lora_alpha=5, target_modules=["c_fc", "c_attn"], layers_to_transform=[1]),
}


def make(name, seed):
    model = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **CONFIGS[name]))
    randomize_lora(model, seed)
    model.eval()
    return model


def main():
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    g = torch.Generator().manual_seed(11)
    V = 101
    exp = {}
    ids, bids, labels, mask = uneven_batch(g, V, exp)
    labels[2, 5:7] = -100

    models = {}
    for i, name in enumerate(CONFIGS):
        model = make(name, 100 + i)
        models[name] = model
        model.save_pretrained(os.path.join(OUT, name))
        with torch.no_grad():
            exp[f"logits.{name}"] = model(ids).logits[0].float().clone()
        model.zero_grad()
        out = model(input_ids=bids, attention_mask=mask, labels=labels)
        out.loss.backward()
        exp[f"loss.{name}"] = out.loss.detach().reshape(1).clone()
        for pname, p in model.named_parameters():
            if p.requires_grad:
                exp[f"grad.{name}.{saved_key(pname)}"] = p.grad.detach().clone()

    # Full fine-tuning: the gradient of every weight of the base model (tied head counted once).
    full = base()
    full.zero_grad()
    out = full(input_ids=bids, attention_mask=mask, labels=labels)
    out.loss.backward()
    exp["loss.full"] = out.loss.detach().reshape(1).clone()
    for pname, p in full.named_parameters():
        exp[f"grad.full.{pname}"] = p.grad.detach().clone()

    # Two adapters active at once (PEFT sums them).
    both = PeftModel.from_pretrained(base(), os.path.join(OUT, "all"), adapter_name="all")
    both.load_adapter(os.path.join(OUT, "pattern"), adapter_name="pattern")
    both.base_model.set_adapter(["all", "pattern"])
    both.eval()
    with torch.no_grad():
        exp["logits.both"] = both(ids).logits[0].float().clone()

    # 20 AdamW steps with warmup + cosine, weight decay, clipping. lr 5e-3: at
    # 2e-2 Adam's normalised steps amplify float32 rounding (summation order)
    # exponentially on this tiny model: two correct float32 implementations
    # drift apart by 1e-2 in loss after 15 steps, so the comparison would test
    # chaos, not the optimizer.
    model = make("all", 100)
    model.eval()  # GPT-2's own dropouts off; LoRA dropout is 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    lrs = []
    train_adamw(model, opt, params, g, V, exp, steps=20, warmup=3, lrs=lrs)
    exp["train.lr"] = torch.tensor(lrs, dtype=torch.float64)
    save_expected(exp, OUT, CONFIGS)
    print("LoRA fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
