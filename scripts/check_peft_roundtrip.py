#!/usr/bin/env python3
"""Adapters written by liblora, loaded into PEFT: the logits must agree.

Trains an adapter with liblora (through the Python binding) on a test model,
saves it, trains and saves a DoRA adapter, one on wte with LayerNorms in
modules_to_save and one with lora_bias, compresses it (per-module ranks as rank_pattern/alpha_pattern),
combines it, and merges it into a Hugging Face checkpoint; then loads each
into transformers + PEFT and compares logits with liblora's (within 1e-4).
Needs torch, transformers, peft and a built liblora.so (LORA_LIBRARY or the
build folder).   python3 scripts/check_peft_roundtrip.py
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import numpy as np
import torch
from peft import PeftModel
from transformers import GPT2LMHeadModel

import lora

MODEL = os.path.join(ROOT, "Tests", "LoRATests", "Fixtures", "gpt2-tok")
CLI = os.path.join(ROOT, ".build", "release", "lora-cli")


def peft_logits(model_dir, adapter_dir, ids):
    base = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    m = PeftModel.from_pretrained(base, adapter_dir).eval() if adapter_dir else base
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


def main():
    work = tempfile.mkdtemp()
    text = os.path.join(work, "data.txt")
    with open(text, "w") as f:
        for i in range(60):
            f.write(f"Line {i}: the quick brown fox jumps over the lazy dog.\n%\n")
    worst = 0.0
    with lora.Model.load(MODEL) as model:
        ids = model.tokenize("the quick brown fox jumps")
        adapter = lora.Adapter.create(model, r=6, alpha=12, target_modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"], seed=1)
        trainer = lora.Trainer(model, adapter, learning_rate=1e-2, max_steps=15, batch_size=2, block_size=32)
        trainer.train(text)
        trained = os.path.join(work, "trained")
        adapter.save(trained)
        ours = np.asarray(model.logits(ids))
        d = np.abs(ours - peft_logits(MODEL, trained, ids)).max()
        print(f"trained adapter (r=6, 4 module types): max |Δlogits| vs PEFT = {d:.2e}")
        worst = max(worst, d)
        merged = os.path.join(work, "merged")
        model.merge(adapter)
        model.save(merged)
        d = np.abs(ours - peft_logits(merged, None, ids)).max()
        print(f"merged checkpoint loaded by transformers: max |Δlogits| = {d:.2e}")
        worst = max(worst, d)
    with lora.Model.load(MODEL) as model:
        # DoRA: trained by liblora (magnitudes and all), loaded into PEFT.
        ids = model.tokenize("the quick brown fox jumps")
        adapter = lora.Adapter.create(model, r=4, alpha=8, target_modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
                                      use_dora=True, seed=2)
        trainer = lora.Trainer(model, adapter, learning_rate=1e-2, max_steps=15, batch_size=2, block_size=32)
        trainer.train(text)
        dora = os.path.join(work, "dora")
        adapter.save(dora)
        ours = np.asarray(model.logits(ids))
        d = np.abs(ours - peft_logits(MODEL, dora, ids)).max()
        print(f"trained DoRA adapter (r=4, 4 module types): max |Δlogits| vs PEFT = {d:.2e}")
        worst = max(worst, d)
    with lora.Model.load(MODEL) as model:
        # LoRA on wte plus LayerNorms in modules_to_save, trained by liblora, loaded into PEFT.
        adapter = lora.Adapter.create(model, r=4, alpha=8, target_modules=["wte", "c_attn"], modules_to_save=["ln_f", "ln_2"],
                                      seed=3)
        trainer = lora.Trainer(model, adapter, learning_rate=1e-2, max_steps=15, batch_size=2, block_size=32)
        trainer.train(text)
        extra = os.path.join(work, "wte_ln")
        adapter.save(extra)
        ours = np.asarray(model.logits(ids))
        d = np.abs(ours - peft_logits(MODEL, extra, ids)).max()
        print(f"trained adapter on wte + c_attn with modules_to_save ln_f, ln_2: max |Δlogits| vs PEFT = {d:.2e}")
        worst = max(worst, d)
    with lora.Model.load(MODEL) as model:
        # lora_bias: B's bias trained by liblora, loaded into PEFT.
        adapter = lora.Adapter.create(model, r=4, alpha=8, target_modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
                                      lora_bias=True, seed=4)
        trainer = lora.Trainer(model, adapter, learning_rate=1e-2, max_steps=15, batch_size=2, block_size=32)
        trainer.train(text)
        biased = os.path.join(work, "lora_bias")
        adapter.save(biased)
        ours = np.asarray(model.logits(ids))
        d = np.abs(ours - peft_logits(MODEL, biased, ids)).max()
        print(f"trained lora_bias adapter (r=4, 4 module types): max |Δlogits| vs PEFT = {d:.2e}")
        worst = max(worst, d)
    if os.path.exists(CLI):
        small = os.path.join(work, "small")
        subprocess.run([CLI, "compress", trained, "--model", MODEL, "--energy", "0.9", "--output-dir", small], check=True,
                       stdout=subprocess.DEVNULL)
        comb = os.path.join(work, "combined")
        subprocess.run([CLI, "combine", "--model", MODEL, trained + ":0.7", small + ":0.3", "--combination-type", "cat",
                        "--output-dir", comb], check=True, stdout=subprocess.DEVNULL)
        for name, path in (("compressed (rank_pattern)", small), ("combined (cat)", comb)):
            with lora.Model.load(MODEL) as model:
                a = lora.Adapter.load(model, path)
                model.attach(a)
                ours = np.asarray(model.logits(ids))
            d = np.abs(ours - peft_logits(MODEL, path, ids)).max()
            print(f"{name}: max |Δlogits| vs PEFT = {d:.2e}")
            worst = max(worst, d)
    ok = worst < 1e-4
    print("OK" if ok else "FAILED", f"(worst {worst:.2e}, bound 1e-4)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
