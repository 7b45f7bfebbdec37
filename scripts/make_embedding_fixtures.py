#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/embedding/ with PEFT + torch, for the Swift
EmbeddingTests: LoRA on GPT-2's token embedding `wte` (PEFT's lora.Embedding:
lora_embedding_A [r, vocab], lora_embedding_B [n_embd, r]) and PEFT's module
targeting for combinations of target_modules, layers_to_transform,
layers_pattern and exclude_modules. Uses Fixtures/gpt2-a. Deterministic.

PEFT 0.21.2 on GPT-2's tied head (ensure_weight_tying false, the default):
only the input embedding is adapted; lm_head keeps the base wte weight.

  embedding/wte/            r=4, alpha=8 on wte and c_attn, random A and B
  embedding/expected.safetensors:
      ids, logits.wte; batch.ids; loss.wte, grad.wte.<saved key>
      train.batch<k>.ids, train.losses, train.final.<saved key>  10 AdamW steps
      loraplus.losses, loraplus.final.<saved key>  5 steps of PEFT's LoRA+ optimizer on the
                            same batches (lr 2e-3, ratio 2.5, decay 0.05: embedding A/B at
                            loraplus_lr_embedding 1e-6)
  embedding/targeting.json  [{"config": {...LoraConfig kwargs}, "modules": [PEFT's
                            targeted_module_names] or "error": "<ValueError text>"}]
"""
import json
import os
import shutil

from peft_fixtures import ROOT, base, pin_hash_seed, save_expected, saved_key, train_adamw, train_loraplus

pin_hash_seed()

import torch
from peft import LoraConfig, get_peft_model

OUT = os.path.join(ROOT, "embedding")

TARGETING = [
    dict(target_modules=["c_attn"], layers_to_transform=[0], layers_pattern="h"),
    dict(target_modules=["c_attn", "mlp.c_proj"], layers_to_transform=[1]),
    dict(target_modules=["c_fc"], layers_to_transform=1),
    dict(target_modules=["c_proj"], layers_to_transform=[0, 1], layers_pattern=["h"]),
    dict(target_modules=["c_attn", "c_fc"], layers_to_transform=[0], layers_pattern="layers"),
    dict(target_modules=["c_attn"], exclude_modules=["h.0.attn.c_attn"]),
    dict(target_modules=["c_proj"], exclude_modules=["mlp.c_proj"]),
    dict(target_modules=r".*\.h\.1\.(attn\.c_attn|mlp\.c_fc)"),
    dict(target_modules=["wte", "c_fc"], layers_to_transform=[1]),
    dict(target_modules=["wte", "attn.c_proj"]),
    dict(target_modules=["h.1.attn.c_attn", "h.0.mlp.c_fc"]),
]


def main():
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    cases = []
    for cfg in TARGETING:
        case = {"config": cfg}
        try:
            m = get_peft_model(base(), LoraConfig(r=2, lora_alpha=4, **cfg))
            case["modules"] = sorted(m.base_model.targeted_module_names)
        except ValueError as e:
            case["error"] = str(e).split("\n")[0]
        cases.append(case)
    with open(os.path.join(OUT, "targeting.json"), "w") as f:
        json.dump(cases, f, indent=2)

    g = torch.Generator().manual_seed(41)
    V = 101
    exp = {}
    ids = torch.randint(0, V, (1, 13), generator=g)
    exp["ids"] = ids[0].clone()
    bids = torch.randint(0, V, (3, 10), generator=g)
    exp["batch.ids"] = bids

    def make():
        model = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["wte", "c_attn"]))
        gg = torch.Generator().manual_seed(400)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gg))
        model.eval()
        return model

    model = make()
    model.save_pretrained(os.path.join(OUT, "wte"))
    with torch.no_grad():
        exp["logits.wte"] = model(ids).logits[0].clone()
    model.zero_grad()
    out = model(input_ids=bids, labels=bids)
    out.loss.backward()
    exp["loss.wte"] = out.loss.detach().reshape(1).clone()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            exp[f"grad.wte.{saved_key(pname)}"] = p.grad.detach().clone()

    model = make()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    train_adamw(model, opt, params, g, V, exp)

    train_loraplus(make(), exp)

    save_expected(exp, OUT, ["wte"])
    print("embedding fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
