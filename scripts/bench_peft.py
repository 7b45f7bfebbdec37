#!/usr/bin/env python3
"""The reference side of the training benchmark: PyTorch + PEFT LoRA training
of a GPT-2 124M-shaped model (random weights, dropout off), r=8, alpha=16 on
c_attn + attn.c_proj + mlp.c_fc, AdamW, the same shapes as
`lora-bench train`. One measurement per process (peak RSS is the process's).

    python3 scripts/bench_peft.py [--threads 2] [--batch 4] [--block 256] [--steps 5] [--autocast bf16]

--autocast bf16 runs the forward under torch.autocast("cpu", dtype=torch.bfloat16)
(the reference for `lora bench train --dtype bf16`; weights stay F32 in torch).
"""
import contextlib
import argparse
import json
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["c_attn", "attn.c_proj", "mlp.c_fc"], task_type="CAUSAL_LM"))
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        ids = torch.randint(0, 50257, (a.batch, a.block))
        t0 = time.perf_counter()
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if a.autocast == "bf16" else contextlib.nullcontext()
        with cast:
            loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return a.batch * a.block / (time.perf_counter() - t0)

    step()  # warm-up
    rates = [step() for _ in range(a.steps)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"bench": "lora_train", "engine": "pytorch+peft", "torch": torch.__version__, "threads": a.threads,
                      "autocast": a.autocast, "batch": a.batch, "block": a.block, "r": a.r, "trainable": trainable,
                      "tokens_per_s": round(statistics.median(rates), 1), "peak_rss_gib": round(rss / 2**30, 3)}))


if __name__ == "__main__":
    main()
