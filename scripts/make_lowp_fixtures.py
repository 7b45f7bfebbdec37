#!/usr/bin/env python3
"""Writes the reduced-precision base fixtures under Tests/LoRATests/Fixtures/lowp/.

The reference for a model whose weight matrices are stored as bf16, f16 or
q8_0 (issue #16) is transformers on the *same rounded weights* stored back as
F32: this script rounds gpt2-a's weight matrices (the Conv1D weights of every
block, wte (also the tied LM head) and wpe; biases and LayerNorms untouched)
  bf16  round to nearest even (torch's .to(torch.bfloat16));
  f16   round to nearest even (torch's .half());
  q8_0  ggml's reference quantizer quantize_row_q8_0 then dequantization:
        blocks of 32 along the input dimension (down each column of a Conv1D
        weight [in, out]; along each row of wte/wpe [rows, n_embd]), a shorter
        last block where the dimension is not a multiple of 32 (n_embd 48 here:
        one of 32, one of 16), d = max|w|/127 in F32, q = roundf(w·(1/d))
        (half away from zero; 0 where d = 0), weight = q·F16(d),
and writes:
  lowp/<dtype>/               config.json + model.safetensors (F32, rounded)
  lowp/expected-<dtype>.safetensors  transformers' logits and greedy ids on it
                              (seq<k>.ids/.logits, greedy<k>.prompt/.output, as
                              make_fixtures.py's expected/ files)
  lowp/train-bf16.safetensors 20 AdamW steps of PEFT on the bf16-rounded base,
                              starting from lora/all, as make_lora_fixtures.py's
                              train.* run (batch<k>.ids, losses, final.<key>)
  lowp/expected-kv-bf16.safetensors
                              the same outputs from gpt2-a (F32 weights) whose
                              keys and values are rounded to bf16 as they leave
                              c_attn (queries kept F32): liblora's bf16 KV cache
                              (`python3 scripts/make_lowp_fixtures.py kv` writes
                              only this file)
Needs make_fixtures.py's gpt2-a and make_lora_fixtures.py's lora/all.
Deterministic (PYTHONHASHSEED pinned for PEFT).
"""
import os
import shutil
import sys

from peft_fixtures import ROOT, base, pin_hash_seed, train_adamw

pin_hash_seed()

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import save_file

from make_fixtures import expected  # noqa: E402  (the same inputs and outputs as expected/)

OUT = os.path.join(ROOT, "lowp")


def is_matrix(name):
    """The weights stored in the model's dtype (liblora's GPT2Layout.isMatrix)."""
    return name.endswith(".weight") and "ln_" not in name and name != "lm_head.weight"


def q8_0_blocks(rows):
    """ggml's quantize_row_q8_0 + dequantize_row_q8_0 on each row of `rows`
    (float32 [n, L]) in blocks of 32 (the last one shorter), exactly."""
    rows = np.asarray(rows, dtype=np.float32)
    out = np.empty_like(rows)
    L = rows.shape[1]
    for b0 in range(0, L, 32):
        x = rows[:, b0:b0 + 32]
        amax = np.max(np.abs(x), axis=1).astype(np.float32)
        d = (amax / np.float32(127.0)).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
        v = (x * inv[:, None]).astype(np.float32)
        # roundf: half away from zero, in float64 (exact for these magnitudes).
        v64 = v.astype(np.float64)
        q = np.sign(v64) * np.floor(np.abs(v64) + 0.5)
        d16 = d.astype(np.float16).astype(np.float32)  # round to nearest even
        out[:, b0:b0 + 32] = (q.astype(np.float32) * d16[:, None]).astype(np.float32)
    return out


def rounded(w, name, dtype):
    if dtype == "bf16":
        return w.to(torch.bfloat16).float()
    if dtype == "f16":
        return w.half().float()
    a = w.detach().numpy()
    if name.startswith("transformer.h."):  # Conv1D [in, out]: blocks down each column
        return torch.from_numpy(q8_0_blocks(a.T).T.copy())
    return torch.from_numpy(q8_0_blocks(a))  # wte, wpe [rows, n_embd]: along each row


def rounded_model(dtype):
    model = base("gpt2-a")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_matrix(name):
                p.copy_(rounded(p.detach().clone(), name, dtype))
    model.config._attn_implementation = "eager"
    return model


def train_bf16():
    """make_lora_fixtures.py's 20-step run, on the bf16-rounded base."""
    model = PeftModel.from_pretrained(base(os.path.join("lowp", "bf16")), os.path.join("lora", "all"), is_trainable=True)
    model.eval()  # GPT-2's own dropouts off; LoRA dropout is 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    g = torch.Generator().manual_seed(7)
    exp = {}
    train_adamw(model, opt, params, g, model.config.vocab_size, exp, steps=20, warmup=3, prefix="")
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "train-bf16.safetensors"),
              metadata={"format": "pt"})


def expected_kv_bf16():
    """gpt2-a with each block's keys and values rounded to bf16 (round to
    nearest even) where c_attn produces them: what a bf16 KV cache holds."""
    model = base("gpt2-a")
    model.config._attn_implementation = "eager"
    C = model.config.n_embd

    def round_kv(_module, _inputs, output):
        out = output.clone()
        out[..., C:] = out[..., C:].to(torch.bfloat16).float()
        return out

    for block in model.transformer.h:
        block.attn.c_attn.register_forward_hook(round_kv)
    expected(model, 1, os.path.join(OUT, "expected-kv-bf16.safetensors"))


def main():
    torch.set_num_threads(1)
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    for dtype in ("bf16", "f16", "q8_0"):
        model = rounded_model(dtype)
        model.save_pretrained(os.path.join(OUT, dtype))
        gen = os.path.join(OUT, dtype, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)  # as gpt2-a: config.json + model.safetensors only
        expected(model, 1, os.path.join(OUT, f"expected-{dtype}.safetensors"))
    train_bf16()
    expected_kv_bf16()
    print("lowp fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    if sys.argv[1:] == ["kv"]:
        torch.set_num_threads(1)
        os.chdir(ROOT)
        expected_kv_bf16()
    else:
        main()
