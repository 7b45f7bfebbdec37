#!/usr/bin/env python3
"""Writes Tests/LoRATests/Fixtures/model_dropout/ with transformers + PEFT +
torch: training with GPT-2's own dropouts on (model.train()), for the Swift
ModelDropoutTests. Uses Fixtures/gpt2-a (make_fixtures.py).

torch draws its dropout masks from its own generator, which liblora does not
reproduce. So here every GPT-2 dropout (transformer.drop, the attention
weights' dropout, attn.resid_dropout, mlp.dropout) is replaced by one that
multiplies by liblora's mask, computed below from the documented hash
(Sources/LoRA/Kernels/Dropout.swift); everything else is transformers' and
PEFT's own code in training mode. The masks' statistics (each element kept
with probability 1 − p, scaled by 1/(1 − p)) are checked here too.

  model_dropout/base/   gpt2-a with embd_pdrop 0.15, attn_pdrop 0.2, resid_pdrop
                        0.25 (distinct: a swapped probability fails); its
                        model.safetensors is a link to gpt2-a's (the same bytes)
  model_dropout/all/    LoRA r=4, alpha=8 on c_attn, c_proj, c_fc (A, B random)
  model_dropout/wte/    LoRA r=4 on wte and c_attn (the embedding mask's backward)
  model_dropout/dora/   DoRA r=4 on c_attn, c_proj, c_fc (magnitudes off ‖W‖ by ~10%)
  model_dropout/expected.safetensors:
      batch.ids, batch.labels: [3, 13] right-padded (lengths 13, 7, 10)
      grad.<adapter>.<saved key>, loss.<adapter>: one pass, block size 16,
          trainer seed 7 (the pass seed is SplitMix64(7)'s first draw)
      full.grad.<name>, full.loss: the same pass, full fine-tuning (wte, wpe,
          h.0.attn.c_attn.weight, h.1.mlp.c_proj.bias)
      train.batch<k>.ids, train.losses, train.final.<saved key>: 8 AdamW steps
          of `all` (lr 5e-3, warmup 2 + cosine, clip 1, batch [2, 12], block 12, seed 11)
"""
import math
import os
import shutil

from peft_fixtures import ROOT, base, pin_hash_seed, save_expected, saved_key, uneven_batch

pin_hash_seed()

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AttentionInterface, GPT2LMHeadModel, get_cosine_schedule_with_warmup

OUT = os.path.join(ROOT, "model_dropout")
PDROP = dict(embd_pdrop=0.15, attn_pdrop=0.2, resid_pdrop=0.25)

PHI = np.uint64(0x9E3779B97F4A7C15)
M64 = (1 << 64) - 1


def mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class SplitMix64:
    def __init__(self, seed):
        self.state = seed

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        return int(mix64(np.uint64(self.state)))


def site_key(seed, site):
    return mix64(np.uint64(seed) ^ np.uint64(((site + 1) * 0xD1B54A32D192ED03) & M64))


def keep_mask(key, idx, p):
    """0 where element idx is dropped, else 1/(1 − p), in float32 as liblora."""
    p32 = np.float32(p)
    threshold = np.uint64(math.ceil(float(p32) * 16777216.0))
    with np.errstate(over="ignore"):
        h = mix64(key + idx.astype(np.uint64) * PHI)
    keep = np.float32(1) / (np.float32(1) - p32)
    return np.where((h >> np.uint64(40)) < threshold, np.float32(0), keep).astype(np.float32)


class Masks:
    """The current pass's seed and block size, read by the dropout stand-ins."""
    seed = 0
    block = 16

    @classmethod
    def rows(cls, site, shape, p):
        B, T, C = shape
        b = np.arange(B).reshape(B, 1, 1)
        t = np.arange(T).reshape(1, T, 1)
        c = np.arange(C).reshape(1, 1, C)
        idx = (b * cls.block + t) * C + c
        return torch.from_numpy(keep_mask(site_key(cls.seed, site), idx, p))

    @classmethod
    def attention(cls, layer, shape, p):
        B, H, T, L = shape
        b = np.arange(B).reshape(B, 1, 1, 1)
        h = np.arange(H).reshape(1, H, 1, 1)
        i = np.arange(T).reshape(1, 1, T, 1)
        j = np.arange(L).reshape(1, 1, 1, L)
        idx = ((b * H + h) * cls.block + i) * cls.block + j
        return torch.from_numpy(keep_mask(site_key(cls.seed, 3 * layer + 1), idx, p))


class MaskDropout(torch.nn.Module):
    def __init__(self, site, p):
        super().__init__()
        self.site, self.p = site, p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * Masks.rows(self.site, tuple(x.shape), self.p)


def masked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """eager_attention_forward with liblora's mask in place of F.dropout.
    transformers builds no mask for a registered attention function (it may
    be causal by construction, as sdpa's is_causal), so the causal mask is
    applied here; the fixture's batches need no other (right padding)."""
    assert attention_mask is None or attention_mask.dtype == torch.bool, attention_mask
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    T, L = weights.shape[-2:]
    causal = torch.ones(T, L, dtype=torch.bool).tril(L - T)
    if attention_mask is not None:
        causal = causal & attention_mask
    weights = weights.masked_fill(~causal, torch.finfo(weights.dtype).min)
    weights = torch.nn.functional.softmax(weights, dim=-1).type(value.dtype)
    if module.training and dropout > 0:
        weights = weights * Masks.attention(module.layer_idx, tuple(weights.shape), dropout)
    return torch.matmul(weights, value).transpose(1, 2), weights


AttentionInterface.register("liblora_dropout", masked_attention)


def with_mask_dropouts(model):
    """Every GPT-2 dropout of model (a GPT2LMHeadModel) → liblora's masks."""
    t = model.transformer
    t.drop = MaskDropout(0, model.config.embd_pdrop)
    for l, block in enumerate(t.h):
        block.attn.resid_dropout = MaskDropout(3 * l + 2, model.config.resid_pdrop)
        block.mlp.dropout = MaskDropout(3 * l + 3, model.config.resid_pdrop)
    model.config._attn_implementation = "liblora_dropout"
    return model


def load_base():
    m = GPT2LMHeadModel.from_pretrained("model_dropout/base", attn_implementation="eager")
    return with_mask_dropouts(m)


def peft_model(name, targets, seed, use_dora=False):
    model = get_peft_model(load_base(), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                                   target_modules=targets, use_dora=use_dora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_magnitude_vector" in pname:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))  # off its initial ‖W‖
            elif "lora_" in pname:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.train()
    return model


def check_equivalence(bids, labels):
    """With every probability 0 the stand-ins are transformers' eager model."""
    from transformers import GPT2LMHeadModel
    ref = GPT2LMHeadModel.from_pretrained("model_dropout/base", attn_implementation="eager").eval()
    zero = dict(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    ours = with_mask_dropouts(GPT2LMHeadModel.from_pretrained("model_dropout/base", attn_implementation="eager", **zero))
    with torch.no_grad():
        a = ref(input_ids=bids, labels=labels).logits
        b = ours.train()(input_ids=bids, labels=labels).logits
    assert (a - b).abs().max() < 1e-5, (a - b).abs().max()


def check_statistics():
    """The masks drop at rate p and scale by 1/(1 − p)."""
    idx = np.arange(2_000_000, dtype=np.uint64)
    for p in (0.1, 0.25, 0.5):
        m = keep_mask(site_key(123, 4), idx, p)
        rate = float((m == 0).mean())
        assert abs(rate - p) < 2e-3, (p, rate)
        assert abs(float(m.mean()) - 1) < 5e-3, (p, m.mean())


def main():
    os.chdir(ROOT)
    check_statistics()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    src = base()
    for k, v in PDROP.items():
        setattr(src.config, k, v)
    src.save_pretrained(os.path.join(OUT, "base"))
    g = torch.Generator().manual_seed(53)
    V = 101
    exp = {}
    _, bids, labels, _ = uneven_batch(g, V, exp)
    del exp["ids"]
    check_equivalence(bids, labels)

    # One pass, block 16: the trainer's first micro-batch seed.
    Masks.block = 16
    Masks.seed = SplitMix64(7).next()
    adapters = {"all": (["c_attn", "c_proj", "c_fc"], 500, False), "wte": (["wte", "c_attn"], 501, False),
                "dora": (["c_attn", "c_proj", "c_fc"], 502, True)}
    for name, (targets, seed, use_dora) in adapters.items():
        model = peft_model(name, targets, seed, use_dora)
        model.save_pretrained(os.path.join(OUT, name))
        # adapter_config.json names the base by the path it was loaded from.
        out = model(input_ids=bids, labels=labels)
        out.loss.backward()
        exp[f"loss.{name}"] = out.loss.detach().reshape(1).clone()
        for pname, p in model.named_parameters():
            if p.requires_grad:
                exp[f"grad.{name}.{saved_key(pname)}"] = p.grad.detach().clone()
        # Without the masks the gradients differ (the dropouts matter here).
        model.eval()
        model.zero_grad()
        model(input_ids=bids, labels=labels).loss.backward()
        pname, p = next((n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
        assert (p.grad - exp[f"grad.{name}.{saved_key(pname)}"]).abs().max() > 1e-3

    full = load_base().train()
    out = full(input_ids=bids, labels=labels)
    out.loss.backward()
    exp["full.loss"] = out.loss.detach().reshape(1).clone()
    params = dict(full.named_parameters())
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
              "transformer.h.1.mlp.c_proj.bias"):
        exp[f"full.grad.{n}"] = params[n].grad.detach().clone()

    # Eight AdamW steps: each step's seed is the trainer generator's next draw.
    Masks.block = 12
    rng = SplitMix64(11)
    model = peft_model("all", ["c_attn", "c_proj", "c_fc"], 500)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=8)
    losses = []
    for k in range(8):
        batch = torch.randint(0, V, (2, 12), generator=g)
        exp[f"train.batch{k}.ids"] = batch
        Masks.seed = rng.next()
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, max_norm=1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    exp["train.losses"] = torch.tensor(losses, dtype=torch.float64)
    for pname, p in model.named_parameters():
        if p.requires_grad:
            exp[f"train.final.{saved_key(pname)}"] = p.detach().clone()

    save_expected(exp, OUT, list(adapters))
    readme = os.path.join(OUT, "base", "generation_config.json")
    if os.path.exists(readme):
        os.remove(readme)
    # The weights are gpt2-a's, byte for byte: a link keeps one copy in git.
    weights = os.path.join(OUT, "base", "model.safetensors")
    with open(weights, "rb") as f, open(os.path.join("gpt2-a", "model.safetensors"), "rb") as g:
        same = f.read() == g.read()
    if same:
        os.remove(weights)
        os.symlink(os.path.join("..", "..", "gpt2-a", "model.safetensors"), weights)
    print("model_dropout fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
