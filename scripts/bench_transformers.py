#!/usr/bin/env python3
"""The reference side of the inference benchmark: transformers (PyTorch) on a
GPT-2 124M-shaped model with random weights, same shapes as lora-bench.

    OPENBLAS_NUM_THREADS=2 python3 scripts/bench_transformers.py [--threads 2] [--prompt 512] [--decode 128]

Prints JSON lines like lora-bench (medians of --repeat runs)."""
import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    print(json.dumps({"engine": "transformers", "torch": torch.__version__, "threads": a.threads}))
    ids = torch.randint(0, 50257, (1, a.prompt))
    with torch.inference_mode():
        model(ids[:, :16])
        pre = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            model(ids, use_cache=False)
            pre.append(a.prompt / (time.perf_counter() - t0))
        print(json.dumps({"engine": "transformers", "bench": "prefill", "tokens": a.prompt, "tokens_per_s": round(statistics.median(pre), 1)}))
        dec = []
        for _ in range(a.repeat):
            out = model(ids[:, :16], use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(a.decode):
                out = model(tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
            dec.append(a.decode / (time.perf_counter() - t0))
        print(json.dumps({"engine": "transformers", "bench": "decode", "tokens": a.decode, "tokens_per_s": round(statistics.median(dec), 1)}))


if __name__ == "__main__":
    main()
