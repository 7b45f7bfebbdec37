#!/usr/bin/env python3
"""Writes the DoRA fixtures under Tests/LoRATests/Fixtures/dora/ with PEFT + torch
(use_dora=True: PEFT 0.21.2's DoraLinearLayer on GPT-2's Conv1D), for the
Swift DoRATests. Uses Fixtures/gpt2-a (make_fixtures.py) and lora/all
(make_lora_fixtures.py). Deterministic (PYTHONHASHSEED pinned).

  dora/all/      DoRA on all four Conv1D types, r=4, alpha=8, random A and B,
                 magnitudes m = ‖W‖·(1 + 0.2·N(0, 1)) so that m/‖W + s·B·A‖ ≠ 1
  dora/layers/   DoRA with rsLoRA, c_fc and c_attn of layer 1 only (layers_to_transform)
  dora/expected.safetensors:
      ids, logits.<name>      logits [T, V] of `ids` with that adapter alone
      logits.both             lora/all then dora/all active (PEFT applies them in order:
                              DoRA rescales the plain adapter's output too)
      logits.merged           dora/all merged by merge_and_unload; merged.<weight> its c_attn weights
      batch.ids, batch.labels, batch.mask   an uneven, right-padded batch
      loss.all, grad.all.<PEFT key>         loss and gradients (A, B, lora_magnitude_vector)
      grad.both.<PEFT key>    gradients of both adapters with lora/all then dora/all active
      train.batch<k>.ids, train.losses, train.lr, train.final.<PEFT key>
                              10 AdamW steps on dora/all (warmup 2 + cosine, decay 0.05, clip 1)
      loraplus.losses, loraplus.final.<PEFT key>
                              5 steps of PEFT's LoRA+ optimizer on the first batches (lr 2e-3,
                              ratio 2.5, decay 0.05): m, 1-D, learns at B's rate
"""
import os
import shutil

from peft_fixtures import ROOT, base, pin_hash_seed, save_expected, saved_key, train_adamw, train_loraplus, uneven_batch

pin_hash_seed()

import torch
from peft import LoraConfig, PeftModel, get_peft_model

OUT = os.path.join(ROOT, "dora")

CONFIGS = {
    "all": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"]),
    "layers": dict(r=3, lora_alpha=5, use_rslora=True, target_modules=["c_fc", "c_attn"], layers_to_transform=[1]),
}


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def make(name, seed):
    model = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, use_dora=True, **CONFIGS[name]))
    randomize(model, seed)
    model.eval()
    return model


def main():
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    g = torch.Generator().manual_seed(23)
    V = 101
    exp = {}
    ids, bids, labels, mask = uneven_batch(g, V, exp)
    exp["batch.mask"] = mask

    for i, name in enumerate(CONFIGS):
        model = make(name, 200 + i)
        model.save_pretrained(os.path.join(OUT, name))
        with torch.no_grad():
            exp[f"logits.{name}"] = model(ids).logits[0].clone()
        if name == "all":
            model.zero_grad()
            out = model(input_ids=bids, attention_mask=mask, labels=labels)
            out.loss.backward()
            exp["loss.all"] = out.loss.detach().reshape(1).clone()
            for pname, p in model.named_parameters():
                if p.requires_grad:
                    exp[f"grad.all.{saved_key(pname)}"] = p.grad.detach().clone()
            merged = model.merge_and_unload()
            with torch.no_grad():
                exp["logits.merged"] = merged(ids).logits[0].clone()
            for l in range(2):
                for mod in ("attn.c_attn", "mlp.c_proj"):
                    w = f"transformer.h.{l}.{mod}.weight"
                    exp[f"merged.{w}"] = merged.state_dict()[w].clone()

    # A plain LoRA adapter, then the DoRA one: PEFT adds lora/all's output to
    # `result` first, and DoRA rescales that result.
    both = PeftModel.from_pretrained(base(), os.path.join(ROOT, "lora", "all"), adapter_name="lora", is_trainable=True)
    both.load_adapter(os.path.join(OUT, "all"), adapter_name="dora", is_trainable=True)
    both.base_model.set_adapter(["lora", "dora"])
    both.eval()
    for p in both.parameters():
        p.requires_grad_(False)
    for pname, p in both.named_parameters():
        if ".lora_" in pname:
            p.requires_grad_(True)
    with torch.no_grad():
        exp["logits.both"] = both(ids).logits[0].clone()
    out = both(input_ids=bids, attention_mask=mask, labels=labels)
    out.loss.backward()
    exp["loss.both"] = out.loss.detach().reshape(1).clone()
    for pname, p in both.named_parameters():
        if p.requires_grad:
            key = pname.replace(".lora_magnitude_vector.dora.weight", ".lora_magnitude_vector")
            key = key.replace(".lora.weight", ".weight").replace(".dora.weight", ".weight")
            adapter = "lora" if (".lora_A.lora." in pname or ".lora_B.lora." in pname) else "dora"
            exp[f"grad.both.{adapter}.{key}"] = p.grad.detach().clone()

    # 10 AdamW steps (lr 5e-3 as make_lora_fixtures.py: higher rates amplify float32 rounding chaotically).
    model = make("all", 200)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    lrs = []
    train_adamw(model, opt, params, g, V, exp, lrs=lrs)
    exp["train.lr"] = torch.tensor(lrs, dtype=torch.float64)

    train_loraplus(make("all", 200), exp)

    save_expected(exp, OUT, CONFIGS)
    print("DoRA fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
