#!/usr/bin/env python3
"""Compares two `lora train` runs: the loss of every step (metrics.jsonl) and
every tensor of the saved adapter or model, within a tolerance.
    compare.py RUN_A RUN_B [--tol 1e-5] [--steps N] [--min-grad-norm X]
--min-grad-norm checks that run A's gradient norm exceeded X at every step
(so that clipping at X really bound)."""
import argparse, json, os, sys
import numpy as np
from safetensors.numpy import load_file

p = argparse.ArgumentParser()
p.add_argument("a"); p.add_argument("b")
p.add_argument("--tol", type=float, default=1e-5)
p.add_argument("--steps", type=int, default=None)
p.add_argument("--min-grad-norm", type=float, default=None)
args = p.parse_args()

def metrics(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip() and "loss" in json.loads(l)]

def weights(d):
    for name in ("adapter_model.safetensors", "model.safetensors"):
        path = os.path.join(d, name)
        if os.path.exists(path):
            return load_file(path)
    sys.exit(f"FAIL: no adapter or model in {d}")

ma, mb = metrics(args.a), metrics(args.b)
fail = []
if args.steps is not None and (len(ma) != args.steps or len(mb) != args.steps):
    fail.append(f"expected {args.steps} steps, got {len(ma)} and {len(mb)}")
if [m["step"] for m in ma] != [m["step"] for m in mb]:
    fail.append("the runs logged different steps")
dl = max((abs(x["loss"] - y["loss"]) for x, y in zip(ma, mb)), default=0.0)
if dl > args.tol:
    fail.append(f"loss trajectories differ by {dl:.3g} > {args.tol}")
if args.min_grad_norm is not None:
    low = [m["grad_norm"] for m in ma if m["grad_norm"] <= args.min_grad_norm]
    if low:
        fail.append(f"clipping did not bind at every step (grad norms {low})")
wa, wb = weights(args.a), weights(args.b)
if sorted(wa) != sorted(wb):
    fail.append("the saved tensors have different names")
dw = dk = 0.0
for k in wa:
    if k in wb:
        if wa[k].shape != wb[k].shape:
            fail.append(f"{k}: shapes differ"); continue
        d = np.abs(wa[k].astype(np.float64) - wb[k].astype(np.float64))
        if k.endswith("attn.c_attn.bias"):
            # The key bias (middle third) has a gradient of exactly zero in exact
            # arithmetic (softmax ignores the q·b_k added to every score of a row):
            # AdamW turns the rounding noise there into steps of ±lr, different
            # for every summation order, and these weights change no output.
            c = d.shape[0] // 3
            dk = max(dk, float(np.max(d[c:2 * c])))
            d = np.concatenate([d[:c], d[2 * c:]])
        dw = max(dw, float(np.max(d, initial=0.0)))
if dw > args.tol:
    fail.append(f"the saved weights differ by {dw:.3g} > {args.tol}")
if fail:
    print("FAIL: " + "; ".join(fail)); sys.exit(1)
note = f" (key bias, no effect on outputs: {dk:.2g})" if dk else ""
print(f"ok: {len(ma)} steps, max |Δloss| {dl:.2g}, max |Δweight| {dw:.2g}{note} (tolerance {args.tol})")
