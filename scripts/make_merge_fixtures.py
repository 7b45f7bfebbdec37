#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/merge/: liblora's merged export of the PEFT
adapter lora/all on gpt2-a (made with the `lora merge` command line of a
release build), loaded into transformers; `expected.safetensors` holds the
logits transformers computes on that export for the ids of
lora/expected.safetensors. The Swift test re-exports, checks the bytes are
the same, and that transformers' logits on the export equal base + adapter.

Needs torch + transformers and .build/release/lora-cli."""
import os
import shutil
import subprocess

import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRATests", "Fixtures")
CLI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "release", "lora-cli")


def main():
    os.chdir(ROOT)
    shutil.rmtree("merge", ignore_errors=True)
    subprocess.run([CLI, "merge", "--model", "gpt2-a", "--adapter", "lora/all", "--output-dir", "merge/export"], check=True)
    model = GPT2LMHeadModel.from_pretrained("merge/export", attn_implementation="eager").eval()
    ids = load_file("lora/expected.safetensors")["ids"].view(1, -1)
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    save_file({"logits": logits.contiguous()}, "merge/expected.safetensors", metadata={"format": "pt"})
    print("merge fixtures written")


if __name__ == "__main__":
    main()
