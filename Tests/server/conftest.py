"""Fixtures of the `lora serve` tests: a tiny random GPT-2 with a real BPE
tokenizer (Tests/LoRATests/Fixtures/gpt2-tok), eight random PEFT adapters
written here with numpy, and the real server started on a free loopback port.

LORA_CLI names the command to test (default: .build/release/lora-cli, else
.build/debug/lora-cli)."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURE_MODEL = os.path.join(REPO, "Tests", "LoRATests", "Fixtures", "gpt2-tok")
ADAPTER_COUNT = 8


# With LORA_TESTS_STRICT=1 (scripts/test.sh sets it: the bootstrap installs
# Chromium and every package these tests need) a skipped test fails the run,
# so a missing browser or client library cannot pass CI unnoticed.
_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_collectreport(report):
    # A module-level importorskip skips the whole file while collecting.
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped and os.environ.get("LORA_TESTS_STRICT") == "1" and exitstatus == 0:
        print("\nLORA_TESTS_STRICT=1: skipped tests count as failures: " + ", ".join(_skipped))
        session.exitstatus = 1


def cli():
    env = os.environ.get("LORA_CLI")
    if env:
        return env
    for kind in ("release", "debug"):
        path = os.path.join(REPO, ".build", kind, "lora-cli")
        if os.path.exists(path):
            return path
    pytest.exit("no lora-cli built: swift build --product lora-cli (or set LORA_CLI)", returncode=2)


def write_safetensors(path, tensors):
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_model_with_extra_vocab(directory, vocab=2000):
    """gpt2-tok with its vocabulary grown to `vocab` while its tokenizer keeps
    1201 tokens: the extra ids' embeddings are zero, so their logits are 0 and
    greedy decoding never picks them, while sampling soon does."""
    shutil.copytree(FIXTURE_MODEL, directory)
    weights = os.path.join(directory, "model.safetensors")
    with open(weights, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, t in header.items():
        if name != "__metadata__":
            assert t["dtype"] == "F32", name
            a, b = t["data_offsets"]
            tensors[name] = np.frombuffer(data[a:b], "<f4").reshape(t["shape"])
    wte = tensors["transformer.wte.weight"]
    tensors["transformer.wte.weight"] = np.vstack([wte, np.zeros((vocab - wte.shape[0], wte.shape[1]), "<f4")])
    write_safetensors(weights, tensors)
    config_path = os.path.join(directory, "config.json")
    config = json.load(open(config_path))
    config["vocab_size"] = vocab
    with open(config_path, "w") as f:
        json.dump(config, f)


def write_adapter(directory, model_dir, seed, r):
    """A PEFT LoRA adapter on c_attn, attn.c_proj, c_fc and mlp.c_proj with non-zero B."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    C, L = cfg["n_embd"], cfg["n_layer"]
    inner = cfg.get("n_inner") or 4 * C
    rng = np.random.default_rng(seed)
    shapes = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, inner), "mlp.c_proj": (inner, C)}
    tensors = {}
    for layer in range(L):
        for module, (fan_in, fan_out) in shapes.items():
            prefix = f"base_model.model.transformer.h.{layer}.{module}"
            tensors[prefix + ".lora_A.weight"] = rng.normal(0, 0.5, (r, fan_in))
            tensors[prefix + ".lora_B.weight"] = rng.normal(0, 0.5, (fan_out, r))
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "adapter_model.safetensors"), tensors)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "gpt2-tok", "r": r,
        "lora_alpha": 2 * r, "lora_dropout": 0.0, "fan_in_fan_out": True, "bias": "none",
        "target_modules": ["c_attn", "c_proj", "c_fc"], "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_variant_adapter(directory, model_dir, seed, variant):
    """A PEFT adapter with one of PEFT's variants, r = 4 on c_attn and c_fc:
    "dora" (use_dora: a magnitude per output feature, around the column
    norms of W, and ln_f in modules_to_save) or "wte" (LoRA on wte too)."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    C, L, V = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    inner = cfg.get("n_inner") or 4 * C
    r = 4
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(L):
        for module, (fan_in, fan_out) in {"attn.c_attn": (C, 3 * C), "mlp.c_fc": (C, inner)}.items():
            prefix = f"base_model.model.transformer.h.{layer}.{module}"
            tensors[prefix + ".lora_A.weight"] = rng.normal(0, 0.5, (r, fan_in))
            tensors[prefix + ".lora_B.weight"] = rng.normal(0, 0.5, (fan_out, r))
            if variant == "dora":
                tensors[prefix + ".lora_magnitude_vector"] = rng.uniform(0.5, 2.0, fan_out)
    if variant == "dora":
        tensors["base_model.model.transformer.ln_f.weight"] = rng.uniform(0.5, 1.5, C)
        tensors["base_model.model.transformer.ln_f.bias"] = rng.normal(0, 0.3, C)
    else:
        tensors["base_model.model.transformer.wte.lora_embedding_A"] = rng.normal(0, 0.5, (r, V))
        tensors["base_model.model.transformer.wte.lora_embedding_B"] = rng.normal(0, 0.5, (C, r))
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "adapter_model.safetensors"), tensors)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "gpt2-tok", "r": r,
        "lora_alpha": 2 * r, "lora_dropout": 0.0, "fan_in_fan_out": True, "bias": "none",
        "target_modules": ["c_attn", "c_fc"] + (["wte"] if variant == "wte" else []), "use_rslora": False,
        "use_dora": variant == "dora", "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": ["ln_f"] if variant == "dora" else None,
    }
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """{model, adapters: {name: dir}, adapter_dir, big_model, root}."""
    root = tmp_path_factory.mktemp("serve")
    model = str(root / "gpt2-tok")
    shutil.copytree(FIXTURE_MODEL, model)
    adapter_dir = root / "adapters"
    adapters = {}
    for i in range(ADAPTER_COUNT):
        d = str(adapter_dir / f"a{i}")
        write_adapter(d, model, seed=100 + i, r=2 + 2 * (i % 3))
        adapters[f"a{i}"] = d
    # A slower model (8 layers, n_embd 512, 1024 positions, byte-level tokenizer) for the tests that
    # need a request still running when they look: about 1000 tokens take seconds on one thread.
    big_model = str(root / "slow-gpt2")
    subprocess.run([cli(), "init-model", big_model, "--n-layer", "8", "--n-embd", "512", "--n-head", "8",
                    "--n-positions", "1024", "--seed", "3"], check=True, capture_output=True)
    return {"model": model, "adapters": adapters, "adapter_dir": str(adapter_dir), "big_model": big_model,
            "root": str(root)}


class Server:
    """A running `lora serve` on a free loopback port."""

    def __init__(self, args, env=None, threads=1):
        extra = ["--threads", str(threads)] if threads else []
        self.proc = subprocess.Popen(
            [cli(), "serve", "--host", "127.0.0.1", "--port", "0"] + extra + args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        deadline = time.time() + 60
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read()
                raise RuntimeError(f"lora serve exited ({self.proc.wait()}): {err}")
            self.lines.append(line)
            if "listening on http://" in line:
                self.url = line.strip().split("listening on ")[1]
                break
            if time.time() > deadline:
                raise RuntimeError("lora serve did not start")
        # The rest of stdout is read in the background so the pipe never fills.
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self, timeout=30):
        """SIGTERM; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def metrics(self):
        """{name{labels}: value} from /metrics."""
        out = {}
        for line in requests.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out


@pytest.fixture(scope="session")
def server(assets):
    """The shared server: the fixture model, adapters a0..a7, run-time loading inside the adapter directory."""
    args = ["--model", assets["model"], "--model-name", "base", "--allow-adapter-loading",
            "--adapter-dir", assets["adapter_dir"], "--max-sequences", "8", "--max-tokens-per-step", "64"]
    for name, d in assets["adapters"].items():
        args += ["--adapter", f"{name}={d}"]
    s = Server(args)
    yield s
    assert s.stop() == 0, s.proc.stderr.read()


def solo(model, prompt, adapters=(), max_tokens=8, extra=()):
    """The same request run alone by `lora generate` (attach + generate, no engine): prompt + text."""
    cmd = [cli(), "generate", "--model", model, "--preset", "library", "--temperature", "0",
           "--max-new-tokens", str(max_tokens), "--threads", "1"]
    for d, scale in adapters:
        cmd += ["--adapter", f"{d}:{scale}"]
    out = subprocess.run(cmd + list(extra) + [prompt], capture_output=True, text=True, check=True).stdout
    assert out.endswith("\n")
    return out[:-1]
