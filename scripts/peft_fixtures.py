"""What the PEFT fixture scripts (make_lora_fixtures.py, make_lowp_fixtures.py,
make_dora_fixtures.py, make_modules_to_save_fixtures.py,
make_embedding_fixtures.py, make_lora_bias_fixtures.py, make_model_dropout_fixtures.py) share: the pinned hash seed, the base model,
the uneven batch, PEFT's saved key names, the AdamW and LoRA+ runs they record, and the
expected.safetensors they write."""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRATests", "Fixtures")


def pin_hash_seed():
    """Re-runs the script with PYTHONHASHSEED=0 (deterministic fixtures)."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        sys.exit(subprocess.call([sys.executable] + sys.argv))


def base(name="gpt2-a"):
    """The base model, by its name relative to ROOT (the scripts chdir there
    first, so adapter_config.json records the relative name)."""
    from transformers import GPT2LMHeadModel
    return GPT2LMHeadModel.from_pretrained(name, attn_implementation="eager").eval()


def saved_key(name):
    """A parameter's name -> the key PEFT saves: the adapter name out, a
    modules_to_save copy under its module's name, DoRA's magnitude as
    `.lora_magnitude_vector`."""
    name = name.replace(".modules_to_save.default", "")
    name = name.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
    return name.replace(".default", "")


def uneven_batch(g, V, exp):
    """ids [1, 13], then a batch of lengths 13, 7, 10 drawn from g, right
    padded, labels -100 on the padding and at [0, 3]: exp ids, batch.ids,
    batch.labels; returns ids, the batch's ids, labels and attention mask."""
    import torch
    ids = torch.randint(0, V, (1, 13), generator=g)
    exp["ids"] = ids[0].clone()
    lengths = [13, 7, 10]
    T = max(lengths)
    bids = torch.zeros((3, T), dtype=torch.long)
    labels = torch.full((3, T), -100, dtype=torch.long)
    mask = torch.zeros((3, T), dtype=torch.long)
    for b, n in enumerate(lengths):
        s = torch.randint(0, V, (n,), generator=g)
        bids[b, :n] = s
        labels[b, :n] = s
        mask[b, :n] = 1
    labels[0, 3] = -100
    exp["batch.ids"] = bids
    exp["batch.labels"] = labels
    return ids, bids, labels, mask


def record_trained(model, exp, prefix):
    for pname, p in model.named_parameters():
        if p.requires_grad:
            exp[f"{prefix}.{saved_key(pname)}"] = p.detach().clone()


def train_adamw(model, opt, params, g, V, exp, steps=10, warmup=2, prefix="train.", lrs=None):
    """`steps` AdamW steps (`warmup` + cosine, clip 1) on random [2, 12]
    batches drawn from g: <prefix>batch<k>.ids, <prefix>losses,
    <prefix>final.*; the learning rate of each step appended to `lrs` when given."""
    import torch
    from transformers import get_cosine_schedule_with_warmup
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=steps)
    losses = []
    for k in range(steps):
        batch = torch.randint(0, V, (2, 12), generator=g)
        exp[f"{prefix}batch{k}.ids"] = batch
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        if lrs is not None:
            lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    exp[f"{prefix}losses"] = torch.tensor(losses, dtype=torch.float64)
    record_trained(model, exp, f"{prefix}final")


def train_loraplus(model, exp, steps=5):
    """`steps` steps of PEFT's LoRA+ optimizer (lr 2e-3, ratio 2.5, decay
    0.05, clip 1) on the first train.batch<k>.ids: loraplus.losses,
    loraplus.final.*."""
    import torch
    from peft.optimizers import create_loraplus_optimizer
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=2e-3, loraplus_lr_ratio=2.5,
                                    loraplus_weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = []
    for k in range(steps):
        batch = exp[f"train.batch{k}.ids"]
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        opt.step()
        losses.append(out.loss.item())
    exp["loraplus.losses"] = torch.tensor(losses, dtype=torch.float64)
    record_trained(model, exp, "loraplus.final")


def save_expected(exp, out, adapters):
    """out/expected.safetensors, and no README.md (PEFT's model card) in the adapter folders."""
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"), metadata={"format": "pt"})
    for name in adapters:
        readme = os.path.join(out, name, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
