#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/loraplus/expected.safetensors: 10 steps of
PEFT's LoRA+ optimizer (peft.optimizers.create_loraplus_optimizer with
torch's AdamW) on the `all` adapter of make_lora_fixtures.py, for the Swift
LoRAPlusTests.

  train.batch<k>.ids  the batch of step k ([2, 12] token ids)
  train.losses, train.lr  each step's loss and A's learning rate (float64)
  train.final.<PEFT key>  the adapter after 10 steps

lr 2e-3 for A, loraplus_lr_ratio 2.5 (B at 5e-3: at 2e-2 float32 rounding is
amplified chaotically on this tiny model, see make_lora_fixtures.py),
warmup 2 + cosine, weight decay 0.05 (passed as loraplus_weight_decay: PEFT's
create_loraplus_optimizer sets every group's decay from that argument, not
from weight_decay), clipping at norm 1. Needs torch, transformers, peft."""
import os

import torch
from peft import PeftModel
from peft.optimizers import create_loraplus_optimizer
from safetensors.torch import save_file
from transformers import GPT2LMHeadModel, get_cosine_schedule_with_warmup

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRATests", "Fixtures")


def main():
    os.chdir(ROOT)
    os.makedirs("loraplus", exist_ok=True)
    base = GPT2LMHeadModel.from_pretrained("gpt2-a", attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, "lora/all", is_trainable=True)
    model.eval()  # GPT-2's own dropouts off; LoRA dropout is 0
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=2e-3, loraplus_lr_ratio=2.5,
                                    loraplus_weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=10)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(29)
    exp, losses, lrs = {}, [], []
    for k in range(10):
        batch = torch.randint(0, 101, (2, 12), generator=g)
        exp[f"train.batch{k}.ids"] = batch
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    exp["train.losses"] = torch.tensor(losses, dtype=torch.float64)
    exp["train.lr"] = torch.tensor(lrs, dtype=torch.float64)
    for name, p in model.named_parameters():
        if p.requires_grad:
            exp[f"train.final.{name.replace('.default', '')}"] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in exp.items()}, "loraplus/expected.safetensors", metadata={"format": "pt"})
    print("LoRA+ fixtures written to", os.path.normpath(os.path.join(ROOT, "loraplus")))


if __name__ == "__main__":
    main()
