#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/svd/expected.safetensors with numpy:
the singular values of the dense ΔW = scaling·B·A ([out, in], PEFT's
orientation) of every module of the PEFT fixture adapters lora/all and
lora/pattern (keys `sv.<adapter>.<module>`), computed in float64.
The Swift tests check rank compression against them (Eckart–Young optimum).

Needs numpy and safetensors (pip install numpy safetensors)."""
import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRATests", "Fixtures")


def scaling(cfg, module):
    import re
    r, alpha = cfg["r"], cfg["lora_alpha"]
    for k, v in cfg.get("rank_pattern", {}).items():
        if re.match(rf"(.*\.)?({k})$", module):
            r = v
            break
    for k, v in cfg.get("alpha_pattern", {}).items():
        if re.match(rf"(.*\.)?({k})$", module):
            alpha = v
            break
    return alpha / (r ** 0.5 if cfg.get("use_rslora") else r)


def main():
    out = {}
    for name in ("all", "pattern"):
        d = os.path.join(ROOT, "lora", name)
        cfg = json.load(open(os.path.join(d, "adapter_config.json")))
        w = load_file(os.path.join(d, "adapter_model.safetensors"))
        for key in sorted(w):
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[len("base_model.model."):-len(".lora_A.weight")]
            a = w[key].astype(np.float64)
            b = w[key.replace("lora_A", "lora_B")].astype(np.float64)
            delta = scaling(cfg, module) * b @ a
            out[f"sv.{name}.{module}"] = np.linalg.svd(delta, compute_uv=False)[: a.shape[0]].astype(np.float32)
    save_file(out, os.path.join(ROOT, "svd", "expected.safetensors"), metadata={"format": "np"})
    print("wrote", len(out), "singular-value vectors")


if __name__ == "__main__":
    main()
