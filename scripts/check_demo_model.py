#!/usr/bin/env python3
"""transformers loads models/fortunes-gpt2 (model and tokenizer) and gets
liblora's token ids and logits. Needs torch + transformers and a built
liblora.so (LORA_LIBRARY or the build folder).  python3 scripts/check_demo_model.py"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import numpy as np
import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

import lora

MODEL = os.path.join(ROOT, "models", "fortunes-gpt2")
text = "Captain's log, stardate 3012.4: Spock says it is illogical.\n\t\t-- Kirk"
tok = GPT2TokenizerFast.from_pretrained(MODEL)
hf = GPT2LMHeadModel.from_pretrained(MODEL, attn_implementation="eager").eval()
ids = tok.encode(text)
with torch.no_grad():
    ref = hf(torch.tensor([ids])).logits[0].numpy()
with lora.Model.load(MODEL) as m:
    ours_ids = m.tokenize(text)
    ours = np.asarray(m.logits(ours_ids))
print("vocab", len(tok), "ids equal:", ids == ours_ids, "decode round trip:", tok.decode(ids) == text)
d = float(np.abs(ours - ref).max())
print(f"max |Δlogits| = {d:.2e}")
ok = ids == ours_ids and d < 1e-4 and tok.decode(ids) == text
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
