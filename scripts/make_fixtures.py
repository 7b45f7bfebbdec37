#!/usr/bin/env python3
"""Writes the GPT-2 engine's test fixtures under Tests/LoRATests/Fixtures/.

Needs torch, transformers and safetensors (pip install torch transformers
safetensors); the Swift tests only read the files it writes. Deterministic:
re-running it rewrites the same bytes.

What it writes:
  gpt2-a/            config.json + model.safetensors as transformers saves them
                     (`transformer.` prefix, tied head absent). 3 heads, n_embd 48.
  gpt2-a-f16/        the same weights in F16; gpt2-a-bf16/ in BF16.
  gpt2-b/            the hub's layout (no prefix, h.N.attn.bias mask buffers),
                     exact gelu, n_inner 96, eps 1e-3, scale_attn_by_inverse_layer_idx.
  expected/*.safetensors  input ids and expected logits (eager attention),
                     batched logits with left and right padding, greedy
                     continuations from model.generate.
  activations.safetensors  x and ACT2FN[name](x) for every supported activation.
  writer.safetensors  a file written by the safetensors library, which the
                     Swift writer must reproduce byte for byte.
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.activations import ACT2FN

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRATests", "Fixtures")


def randomize(model, seed, std):
    """Weights with std 0.1-0.2 and randomised LayerNorms and biases: the
    default init (0.02) makes attention nearly uniform and hides bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def build(cfg_kwargs, seed, std):
    cfg = GPT2Config(**cfg_kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.config._attn_implementation = "eager"
    randomize(model, seed, std)
    return model


def positions_from_mask(mask):
    pos = mask.long().cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    return pos


def expected(model, seed, path):
    cfg = model.config
    g = torch.Generator().manual_seed(seed + 1)
    V, P = cfg.vocab_size, cfg.n_positions
    out = {}
    lengths = [1, 5, 13, P]
    with torch.no_grad():
        for k, T in enumerate(lengths):
            ids = torch.randint(0, V, (1, T), generator=g)
            logits = model(input_ids=ids).logits[0]
            out[f"seq{k}.ids"] = ids[0].clone()
            out[f"seq{k}.logits"] = logits.float().clone()
        # Batches of different lengths, left and right padded.
        seqs = [torch.randint(0, V, (n,), generator=g) for n in (7, 3, 11)]
        T = max(len(s) for s in seqs)
        for side in ("left", "right"):
            ids = torch.zeros((len(seqs), T), dtype=torch.long)
            mask = torch.zeros((len(seqs), T), dtype=torch.long)
            for b, s in enumerate(seqs):
                if side == "left":
                    ids[b, T - len(s):] = s
                    mask[b, T - len(s):] = 1
                else:
                    ids[b, :len(s)] = s
                    mask[b, :len(s)] = 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
            logits = logits * mask.unsqueeze(-1)  # padding positions are not compared
            out[f"batch_{side}.ids"] = ids
            out[f"batch_{side}.mask"] = mask
            out[f"batch_{side}.logits"] = logits.float().contiguous()
        for k, n in enumerate((1, 4)):
            prompt = torch.randint(0, V, (1, n), generator=g)
            gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=min(12, P - n), pad_token_id=0, eos_token_id=None)
            out[f"greedy{k}.prompt"] = prompt[0].clone()
            out[f"greedy{k}.output"] = gen[0].clone()
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata={"format": "pt"})


def save_hub_layout(model, directory):
    """The official gpt2 hub file's layout: no `transformer.` prefix, plus the
    h.N.attn.bias causal-mask buffers [1, 1, P, P] and attn.masked_bias."""
    os.makedirs(directory, exist_ok=True)
    P = model.config.n_positions
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        sd[k[len("transformer."):]] = v.clone().contiguous()
    for i in range(model.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P)).view(1, 1, P, P).contiguous()
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(directory)


def main():
    for d in ("gpt2-a", "gpt2-a-f16", "gpt2-a-bf16", "gpt2-b", "gpt2-tok", "expected"):
        shutil.rmtree(os.path.join(ROOT, d), ignore_errors=True)
    os.makedirs(os.path.join(ROOT, "expected"), exist_ok=True)

    a = build(dict(vocab_size=101, n_positions=32, n_embd=48, n_layer=2, n_head=3,
                   activation_function="gelu_new", bos_token_id=100, eos_token_id=100), seed=1, std=0.15)
    a.save_pretrained(os.path.join(ROOT, "gpt2-a"))
    expected(a, 1, os.path.join(ROOT, "expected", "gpt2-a.safetensors"))
    for dtype, name in ((torch.float16, "f16"), (torch.bfloat16, "bf16")):
        low = build(dict(a.config.to_dict()), seed=1, std=0.15)
        low.load_state_dict(a.state_dict())
        low = low.to(dtype)
        low.save_pretrained(os.path.join(ROOT, f"gpt2-a-{name}"))
        # Expected logits: the rounded weights computed in float32.
        ref = low.float().eval()
        ref.config._attn_implementation = "eager"
        expected(ref, 1, os.path.join(ROOT, "expected", f"gpt2-a-{name}.safetensors"))

    b = build(dict(vocab_size=80, n_positions=24, n_embd=64, n_layer=3, n_head=4, n_inner=96,
                   activation_function="gelu", layer_norm_epsilon=1e-3,
                   scale_attn_by_inverse_layer_idx=True, bos_token_id=79, eos_token_id=79), seed=2, std=0.2)
    save_hub_layout(b, os.path.join(ROOT, "gpt2-b"))
    expected(b, 2, os.path.join(ROOT, "expected", "gpt2-b.safetensors"))

    # A tiny model with the fixture tokenizer (make_tokenizer_fixtures.py), for
    # the C and Python hosts: text in, text out. Expected logits of one text.
    tok_dir = os.path.join(ROOT, "tokenizer")
    from transformers import GPT2TokenizerFast
    tok = GPT2TokenizerFast.from_pretrained(tok_dir)
    t = build(dict(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                   bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id), seed=3, std=0.15)
    tdir = os.path.join(ROOT, "gpt2-tok")
    t.save_pretrained(tdir)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(tok_dir, name), os.path.join(tdir, name))
    text = "Hello, world! The quick brown fox jumps over the lazy dog."
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        logits = t(input_ids=ids).logits[0].float()
    save_file({"ids": ids[0].clone(), "logits": logits.contiguous()},
              os.path.join(ROOT, "expected", "gpt2-tok.safetensors"), metadata={"format": "pt", "text": text})

    for d in ("gpt2-a", "gpt2-a-f16", "gpt2-a-bf16", "gpt2-b", "gpt2-tok"):
        gc = os.path.join(ROOT, d, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)

    # Activations.
    x = torch.linspace(-9, 9, 401)
    acts = {"x": x}
    for name in ("gelu_new", "gelu", "gelu_pytorch_tanh", "gelu_fast", "gelu_python", "quick_gelu",
                 "relu", "silu", "swish", "tanh", "sigmoid", "linear"):
        acts[name] = ACT2FN[name](x).float().clone().contiguous()
    save_file(acts, os.path.join(ROOT, "activations.safetensors"), metadata={"format": "pt"})

    # The writer's reference: several dtypes, names that sort h.1, h.10, h.2.
    g = torch.Generator().manual_seed(7)
    w = {
        "h.10.w": torch.randn(3, 5, generator=g),
        "h.2.w": torch.randn(2, generator=g),
        "h.1.w": torch.randn(4, 1, generator=g),
        "b16": torch.randn(3, generator=g).to(torch.bfloat16),
        "half": torch.randn(5, generator=g).to(torch.float16),
        "ids": torch.arange(6, dtype=torch.int64).view(2, 3),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
        "ünï": torch.ones(2),
    }
    save_file(w, os.path.join(ROOT, "writer.safetensors"), metadata={"format": "pt"})
    print("fixtures written under", os.path.normpath(ROOT))


if __name__ == "__main__":
    main()
