#!/usr/bin/env python3
"""Drift of each reduced-precision dtype from the F32 model (issue #16).

For a model directory and a held-out text: the text is tokenized and cut into
blocks of n_positions tokens; for each dtype (f32, bf16, f16, q8_0) the script
computes the logits of every block with liblora (Python binding), the
perplexity (exp of the mean next-token cross-entropy, float64) and the largest
|logit - F32 logit| over all positions. Prints one line per dtype.

  LORA_LIBRARY=.build/release/liblora.so python3 scripts/lowp_drift.py \
      models/fortunes-gpt2 /usr/share/games/fortunes/startrek
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import numpy as np  # noqa: E402

import lora  # noqa: E402


def blocks(model, text):
    ids = model.tokenize(text)
    n = model.info.n_positions
    return [ids[i:i + n] for i in range(0, len(ids) - 1, n) if len(ids[i:i + n]) > 1]


def main():
    model_dir, text_path = sys.argv[1], sys.argv[2]
    text = open(text_path, encoding="utf-8", errors="replace").read()
    ref = None
    print(f"{model_dir} on {text_path}")
    for dtype in ("f32", "bf16", "f16", "q8_0"):
        with lora.Model.load(model_dir, dtype=dtype) as m:
            nll, count, worst, logits = 0.0, 0, 0.0, []
            for b in blocks(m, text):
                x = np.asarray(m.logits(b), dtype=np.float64)
                logits.append(x)
                lse = np.log(np.exp(x[:-1] - x[:-1].max(axis=1, keepdims=True)).sum(axis=1)) + x[:-1].max(axis=1)
                nll += float((lse - x[np.arange(len(b) - 1), b[1:]]).sum())
                count += len(b) - 1
            if ref is None:
                ref = logits
            worst = max(float(np.abs(a - r).max()) for a, r in zip(logits, ref))
            print(f"{dtype:5s} perplexity {math.exp(nll / count):.4f}  max |dlogit| vs f32 {worst:.4g}  ({count} predictions)")


if __name__ == "__main__":
    main()
