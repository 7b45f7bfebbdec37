"""`lora export-gguf` checked with the real GGUF tools.

Default run (Tests/gguf/run.sh): every exported file is read back with gguf-py
(PyPI `gguf`, llama.cpp's own reader/writer package) and every tensor, shape,
type and metadata key is compared with the safetensors source.

With LORA_TEST_LLAMA_CPP=1 (and llama-cpp-python installed, see
scripts/llama_cpp.sh), the exported models and adapters also run in llama.cpp
and its logits, greedy tokens and tokenization are compared with liblora's
(through the Python binding; LORA_LIBRARY names liblora.so).
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "Tests" / "LoRATests" / "Fixtures"
FORTUNES = REPO / "models" / "fortunes-gpt2"


def cli() -> str:
    env = os.environ.get("LORA_CLI")
    if env:
        return env
    for p in (REPO / ".build" / "release" / "lora-cli", REPO / ".build" / "debug" / "lora-cli"):
        if p.exists():
            return str(p)
    pytest.fail("no lora-cli: set LORA_CLI or build it (swift build --product lora-cli)")


def export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([cli(), "export-gguf", *map(str, args)], capture_output=True, text=True)


def export_ok(*args):
    r = export(*args)
    assert r.returncode == 0, r.stderr
    return r


def fields(reader: GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(reader: GGUFReader) -> dict:
    return {t.name: t for t in reader.tensors}


# ---------------------------------------------------------------------------------------------
# Base model


def gguf_names(n_layer: int, tied: bool) -> dict:
    """llama.cpp's GPT-2 tensor name → (HF name without `transformer.`, transposed?)."""
    m = {"token_embd.weight": ("wte.weight", False), "position_embd.weight": ("wpe.weight", False),
         "output_norm.weight": ("ln_f.weight", False), "output_norm.bias": ("ln_f.bias", False)}
    for l in range(n_layer):
        for gg, hf in (("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
                       ("ffn_norm", "ln_2"), ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj")):
            conv = "norm" not in gg
            m[f"blk.{l}.{gg}.weight"] = (f"h.{l}.{hf}.weight", conv)
            m[f"blk.{l}.{gg}.bias"] = (f"h.{l}.{hf}.bias", False)
    if not tied:
        m["output.weight"] = ("lm_head.weight", False)
    return m


def hf_weights(model_dir: Path) -> dict:
    raw = load_file(str(model_dir / "model.safetensors"))
    return {k.removeprefix("transformer."): v.astype(np.float32) for k, v in raw.items()}


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> Path:
    """A GPT-2 with its own LM head (output.weight) and the fixture tokenizer, made by transformers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("untied")
    torch.manual_seed(7)
    cfg = transformers.GPT2Config(vocab_size=1201, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                  tie_word_embeddings=False, bos_token_id=1200, eos_token_id=1200)
    m = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # LayerNorms and biases away from 1 and 0, so a mix-up shows
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    m.save_pretrained(d)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(FIX / "gpt2-tok" / f, d / f)
    return d


GPT2_TOKENIZER = REPO.parent / "shared" / "data" / "gpt2-tokenizer"


@pytest.fixture(scope="module")
def real_vocab(tmp_path_factory) -> Path:
    """A small random GPT-2 (n_embd 64) with the real GPT-2 tokenizer: 50,257 tokens, 50,000 merges."""
    if not (GPT2_TOKENIZER / "vocab.json").exists():
        pytest.skip(f"{GPT2_TOKENIZER} (the real GPT-2 vocab.json and merges.txt) is not here")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("real-vocab")
    torch.manual_seed(3)
    cfg = transformers.GPT2Config(n_positions=128, n_embd=64, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2_TOKENIZER / f, d / f)
    return d


@pytest.fixture
def model_dirs(request):
    """The models under test by name; the transformers-made ones only when asked for."""
    def get(which):
        fixed = {"gpt2-tok": FIX / "gpt2-tok", "fortunes": FORTUNES}
        return fixed[which] if which in fixed else request.getfixturevalue(which.replace("-", "_"))
    return get


@pytest.mark.parametrize("which", ["gpt2-tok", "fortunes", "untied", "real-vocab"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_model_tensors_and_metadata(which, dtype, model_dirs, tmp_path):
    src = model_dirs(which)
    out = tmp_path / "m.gguf"
    export_ok("--model", src, "--out", out, "--dtype", dtype)
    cfg = json.loads((src / "config.json").read_text())
    r = GGUFReader(out)
    kv = fields(r)

    # GGUF v3, 32-byte aligned, every tensor at a multiple of 32.
    assert r.fields["GGUF.version"].contents() == 3
    assert r.alignment == 32 and kv["general.alignment"] == 32
    assert all(t.data_offset % 32 == 0 for t in r.tensors)

    tied = cfg.get("tie_word_embeddings", True)
    names = gguf_names(cfg["n_layer"], tied)
    got = tensors(r)
    assert set(got) == set(names)
    hf = hf_weights(src)
    want_type = GGMLQuantizationType.F32 if dtype == "f32" else GGMLQuantizationType.F16
    for gg, (hfname, conv) in names.items():
        t = got[gg]
        w = hf[hfname]
        ref = w.T if conv else w  # Conv1D [in, out] → [out, in] (ne {in, out})
        assert list(t.shape) == list(reversed(ref.shape)), gg  # gguf-py reports ne (innermost first)
        if ref.ndim == 1:
            assert t.tensor_type == GGMLQuantizationType.F32, gg
            np.testing.assert_array_equal(t.data.reshape(ref.shape), ref, err_msg=gg)
        else:
            assert t.tensor_type == want_type, gg
            expect = ref if dtype == "f32" else ref.astype(np.float16)
            np.testing.assert_array_equal(t.data.reshape(ref.shape), expect, err_msg=gg)

    assert kv["general.architecture"] == "gpt2" and kv["general.type"] == "model"
    assert kv["general.file_type"] == (0 if dtype == "f32" else 1)
    n_embd = cfg["n_embd"]
    assert kv["gpt2.context_length"] == cfg["n_positions"]
    assert kv["gpt2.embedding_length"] == n_embd
    assert kv["gpt2.feed_forward_length"] == (cfg.get("n_inner") or 4 * n_embd)
    assert kv["gpt2.block_count"] == cfg["n_layer"]
    assert kv["gpt2.attention.head_count"] == cfg["n_head"]
    assert kv["gpt2.vocab_size"] == cfg["vocab_size"]
    assert kv["gpt2.attention.layer_norm_epsilon"] == pytest.approx(cfg["layer_norm_epsilon"], rel=1e-6)

    # The tokenizer: vocab.json by id, <|endoftext|> a control token, merges.txt in order.
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    by_id = {i: s for s, i in vocab.items()}
    tokens = kv["tokenizer.ggml.tokens"]
    types = kv["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == cfg["vocab_size"]
    for i in range(cfg["vocab_size"]):
        if i in by_id:
            assert tokens[i] == by_id[i]
            assert types[i] == (3 if by_id[i] == "<|endoftext|>" else 1)
        else:
            assert tokens[i] == f"[PAD{i}]" and types[i] == 5
    merges = [l for l in (src / "merges.txt").read_text(encoding="utf-8").split("\n")
              if l and not l.startswith("#version")]
    assert kv.get("tokenizer.ggml.merges", []) == merges
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "gpt-2"
    assert kv["tokenizer.ggml.bos_token_id"] == cfg["bos_token_id"]
    assert kv["tokenizer.ggml.eos_token_id"] == cfg["eos_token_id"]


def stored_weights(model_dir: Path) -> dict:
    """The exact F32 values of a model `lora convert` stored as BF16, F16 or Q8_0
    (Q8_0: int8 × the F16 scale of its block of 32 along the input dimension)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as load_torch
    raw = {k.removeprefix("transformer."): v for k, v in load_torch(str(model_dir / "model.safetensors")).items()}
    out = {}
    for k, v in raw.items():
        if k.endswith(".q8_0_scale"):
            continue
        if k.endswith(".q8_0"):
            name = k.removesuffix(".q8_0")
            q = v.to(torch.float32).numpy()
            scale = raw[k + "_scale"].to(torch.float32).numpy()
            if name.startswith(("wte", "wpe", "lm_head")):  # [rows, n_embd]: blocks along each row
                out[name] = q * np.repeat(scale, 32, axis=1)[:, :q.shape[1]]
            else:  # Conv1D [in, out]: blocks down each column
                out[name] = q * np.repeat(scale, 32, axis=0)[:q.shape[0], :]
        else:
            out[k] = v.to(torch.float32).numpy()
    return out


@pytest.mark.parametrize("stored", ["bf16", "f16", "q8_0"])
def test_a_reduced_precision_model_exports_its_stored_values(stored, tmp_path):
    conv = tmp_path / stored
    r = subprocess.run([cli(), "convert", "--model", FORTUNES, "--dtype", stored, "--output-dir", conv],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m.gguf"
    export_ok("--model", conv, "--out", out)
    got = tensors(GGUFReader(out))
    w = stored_weights(conv)
    for gg, (hfname, transpose) in gguf_names(4, True).items():
        ref = w[hfname].T if transpose else w[hfname]
        np.testing.assert_array_equal(got[gg].data.reshape(ref.shape), ref, err_msg=gg)


def test_model_without_tokenizer_runs_on_ids(tmp_path):
    out = tmp_path / "a.gguf"
    export_ok("--model", FIX / "gpt2-a", "--out", out)
    kv = fields(GGUFReader(out))
    assert kv["tokenizer.ggml.model"] == "none" and kv["gpt2.vocab_size"] == 101
    assert "tokenizer.ggml.tokens" not in kv


# ---------------------------------------------------------------------------------------------
# Adapters

TARGET_NAMES = {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def peft_scaling(cfg: dict, module: str, r: int) -> float:
    """PEFT's scaling of one module: alpha_pattern / rank_pattern keys match a name suffix."""
    def pattern(p, default):
        for k, v in p.items():
            import re
            if re.fullmatch(rf"(.*\.)?({k})", module):
                return v
        return default
    alpha = pattern(cfg.get("alpha_pattern") or {}, cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def check_adapter(adapter_dir: Path, gguf: Path, dtype: str):
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    st = load_file(str(adapter_dir / "adapter_model.safetensors"))
    r = GGUFReader(gguf)
    kv = fields(r)
    assert kv["general.architecture"] == "gpt2" and kv["general.type"] == "adapter"
    assert kv["adapter.type"] == "lora"
    alpha = kv["adapter.lora.alpha"]
    expect_alpha = cfg["lora_alpha"] * (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else 1)
    assert alpha == pytest.approx(expect_alpha, rel=1e-7)
    assert r.alignment == 32 and all(t.data_offset % 32 == 0 for t in r.tensors)
    got = tensors(r)
    pairs = 0
    want_type = GGMLQuantizationType.F32 if dtype == "f32" else GGMLQuantizationType.F16
    for key, A in st.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        B = st[key.replace("lora_A", "lora_B")]
        layer = int(module.split(".")[2])
        target = ".".join(module.split(".")[3:])
        base = f"blk.{layer}.{TARGET_NAMES[target]}.weight"
        a, b = got[base + ".lora_a"], got[base + ".lora_b"]
        rank, n_in = A.shape
        n_out = B.shape[0]
        # ne: lora_a {in, r}, lora_b {r, out}: PEFT's A [r, in] and B [out, r] as they are.
        assert list(a.shape) == [n_in, rank] and list(b.shape) == [rank, n_out]
        assert a.tensor_type == want_type and b.tensor_type == want_type
        a_np = a.data.reshape(rank, n_in).astype(np.float32)
        b_np = b.data.reshape(n_out, rank).astype(np.float64)
        if dtype == "f32":
            np.testing.assert_array_equal(a_np, A)
        else:
            np.testing.assert_array_equal(a.data.reshape(rank, n_in), A.astype(np.float16))
        # What llama.cpp applies, (alpha / rank)·B'·A, is PEFT's scaling·B·A.
        s = peft_scaling(cfg, module, rank)
        applied = alpha / rank
        tol = 1e-6 if dtype == "f32" else 1e-3
        np.testing.assert_allclose(applied * b_np, s * B.astype(np.float64),
                                   rtol=tol, atol=tol * np.abs(s * B).max())
        if dtype == "f32" and abs(s / applied - 1) <= 1e-6:
            np.testing.assert_array_equal(b.data.reshape(n_out, rank), B)  # written unchanged
        pairs += 1
    assert pairs > 0 and len(got) == 2 * pairs


@pytest.mark.parametrize("name", ["all", "pattern", "layers"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_adapter_tensors_and_scaling(name, dtype, tmp_path):
    out = tmp_path / "a.gguf"
    export_ok("--model", FIX / "gpt2-a", "--adapter", FIX / "lora" / name, "--out", out, "--dtype", dtype)
    check_adapter(FIX / "lora" / name, out, dtype)


def adapter_copy(tmp_path, **changes) -> Path:
    d = tmp_path / "adapter"
    shutil.copytree(FIX / "lora" / "all", d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(changes)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("change,fragment", [
    ({"use_dora": True}, "cannot express DoRA"),
    ({"modules_to_save": ["ln_f"]}, "cannot express modules_to_save"),
    ({"lora_bias": True}, "cannot express lora_bias"),
])
def test_what_gguf_lora_cannot_express_is_refused(change, fragment, tmp_path):
    out = tmp_path / "x.gguf"
    r = export("--model", FIX / "gpt2-a", "--adapter", adapter_copy(tmp_path, **change), "--out", out)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert not out.exists()


def test_bad_inputs_are_one_line_errors(tmp_path):
    out = tmp_path / "x.gguf"
    cases = [
        (["--model", FIX / "gpt2-tok", "--adapter", FIX / "lora" / "all"], "the base model needs"),  # wrong base
        (["--model", FIX / "gpt2-b"], "gelu_new"),  # erf GELU: not llama.cpp's gpt2 graph
        (["--model", FIX / "gpt2-a", "--dtype", "q4"], "dtype"),
        (["--model", tmp_path / "missing"], "not a directory"),
    ]
    for args, fragment in cases:
        r = export(*args, "--out", out)
        assert r.returncode != 0
        assert fragment in r.stderr and "Fatal error" not in r.stderr, (args, r.stderr)
        assert not out.exists()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# llama.cpp (LORA_TEST_LLAMA_CPP=1): logits, greedy tokens and tokenization against liblora

needs_llama = pytest.mark.skipif(
    os.environ.get("LORA_TEST_LLAMA_CPP") != "1",
    reason="LORA_TEST_LLAMA_CPP=1 runs llama.cpp (Tests/gguf/run.sh installs it with scripts/llama_cpp.sh)")

# Max |Δlogit| allowed between llama.cpp and liblora, relative to the largest
# |logit|. Not exact: llama.cpp's CPU GELU rounds its input to F16 and looks the
# result up in an F16 table (GGML_GELU_FP16 in ggml-cpu/vec.h), an error of up
# to F16's unit roundoff (2^-11 = 4.9e-4) on every activation. 1e-3 is two of
# those; measured: at most 4.1e-4 (README). test_llama_cpp_matches_its_own_gelu
# shows that this GELU is what remains.
LLAMA_F32_REL = 1e-3
# F16 weights: ggml also rounds the activations to F16 before each matmul with
# them, while liblora runs the F32 source. Measured: 1.1e-3.
LLAMA_F16_REL = 5e-3
# llama.cpp against a PyTorch reference that computes GELU as ggml does (the F16
# table): what remains are F16 roundings that fall the other way (a 1-ulp flip
# of a GELU input moves its output by ~5e-4 of its size). The bound.
LLAMA_EMULATED_TOL = 1e-3
GREEDY_TOKENS = 24
PROMPT = "A fool and his money are soon parted. The quick brown fox"


def llama_model(path, lora=None):
    import llama_cpp
    return llama_cpp.Llama(
        model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=128, n_batch=128, n_ubatch=128,
        n_threads=2, logits_all=True, verbose=False, seed=0, flash_attn=False,
        # F32 KV cache: the default F16 cache would round every key and value.
        type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def llama_greedy(llm, ids, n):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        llm.eval([t])
    return out


def lora_greedy(m, ids, n):
    seq = list(ids)
    for _ in range(n):
        seq.append(int(np.argmax(m.logits(seq)[-1])))
    return seq[len(ids):]


def compare(label, lm, llm, ids, rel):
    """liblora vs llama.cpp on the prompt and on liblora's greedy continuation."""
    cont = lora_greedy(lm, ids, GREEDY_TOKENS)
    seq = list(ids) + cont
    ref = np.asarray(lm.logits(seq), dtype=np.float32)
    got = llama_logits(llm, seq)
    delta = float(np.abs(ref - got).max())
    scale = float(np.abs(ref).max())
    print(f"\n{label}: max |Δlogit| = {delta:.3e} over {len(seq)} positions "
          f"(logit range {ref.min():.2f}..{ref.max():.2f}; {delta / scale:.1e} of the largest)")
    assert delta <= rel * scale, f"{label}: max |Δlogit| {delta} > {rel} × {scale}"
    # llama.cpp's own greedy run (prompt, then one token at a time through its KV
    # cache) picks liblora's tokens; a difference is allowed only at a near tie.
    theirs = llama_greedy(llm, ids, GREEDY_TOKENS)
    for i, (a, b) in enumerate(zip(theirs, cont)):
        if a != b:
            top = np.sort(ref[len(ids) - 1 + i])[-2:]
            assert top[1] - top[0] <= 2 * rel * scale, f"{label}: greedy token {i} differs ({a} vs {b}), margin {top[1] - top[0]}"
            print(f"{label}: greedy tokens agree up to a near tie at token {i}")
            break
    return delta


@needs_llama
@pytest.mark.parametrize("which,dtype", [("fortunes", "f32"), ("fortunes", "f16"), ("gpt2-tok", "f32"), ("untied", "f32"),
                                         ("real-vocab", "f32")])
def test_llama_cpp_runs_the_exported_model(which, dtype, model_dirs, tmp_path):
    import lora
    src = model_dirs(which)
    out = tmp_path / "m.gguf"
    export_ok("--model", src, "--out", out, "--dtype", dtype)
    llm = llama_model(out)
    with lora.Model.load(str(src)) as lm:
        ids = lm.tokenize(PROMPT)
        # The tokenizer metadata: llama.cpp's GPT-2 BPE splits texts as liblora (and GPT2TokenizerFast) do.
        for text in (PROMPT, " Hello,  world!\n\tTabs and   spaces", "don't 123 4567 café 日本語 🎉<|endoftext|>x"):
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == lm.tokenize(text), text
        compare(f"{which} {dtype}", lm, llm, ids, LLAMA_F32_REL if dtype == "f32" else LLAMA_F16_REL)


@needs_llama
def test_llama_cpp_runs_a_q8_0_model_exported_as_f32(tmp_path):
    """A model liblora keeps in Q8_0 exports its stored values: llama.cpp then
    computes what liblora computes in Q8_0 mode."""
    import lora
    conv = tmp_path / "q8"
    r = subprocess.run([cli(), "convert", "--model", FORTUNES, "--dtype", "q8_0", "--output-dir", conv],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m.gguf"
    export_ok("--model", conv, "--out", out)
    llm = llama_model(out)
    with lora.Model.load(str(conv)) as lm:
        compare("fortunes stored as q8_0, exported f32", lm, llm, lm.tokenize(PROMPT), LLAMA_F32_REL)


def peft_adapter(d: Path, base_dir: Path, targets, seed, **kw) -> Path:
    """A PEFT adapter with random A and B (B scaled by 0.3)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    base = transformers.GPT2LMHeadModel.from_pretrained(base_dir)
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(target_modules=targets, init_lora_weights=False, fan_in_fan_out=True, **kw)
    pm = peft.get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(0.3)
    pm.save_pretrained(d)
    return d


ADAPTERS = {
    "attn.c_attn": dict(targets=["c_attn"], r=8, lora_alpha=16),
    "attn.c_proj": dict(targets=["attn.c_proj"], r=8, lora_alpha=16),
    "mlp.c_fc": dict(targets=["c_fc"], r=4, lora_alpha=8),
    "mlp.c_proj": dict(targets=["mlp.c_proj"], r=8, lora_alpha=32),
    # Every target, rsLoRA, per-module ranks and alphas: B pre-scaled where alpha/r cannot say it.
    "all, rsLoRA, patterns": dict(targets=["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"], r=8, lora_alpha=12,
                                  use_rslora=True, rank_pattern={"h.1.attn.c_attn": 4, "mlp.c_fc": 12},
                                  alpha_pattern={"attn.c_proj": 5}),
}


@needs_llama
@pytest.mark.parametrize("which,name", [("fortunes", n) for n in ADAPTERS] + [("untied", "all, rsLoRA, patterns")])
def test_llama_cpp_applies_the_exported_adapter(which, name, model_dirs, tmp_path):
    import lora
    src = model_dirs(which)
    spec = dict(ADAPTERS[name])
    adir = peft_adapter(tmp_path / "adapter", src, spec.pop("targets"), seed=len(name), **spec)
    base = tmp_path / "base.gguf"
    ad = tmp_path / "adapter.gguf"
    export_ok("--model", src, "--out", base)
    export_ok("--model", src, "--adapter", adir, "--out", ad)
    check_adapter(adir, ad, "f32")
    llm = llama_model(base, lora=ad)
    with lora.Model.load(str(src)) as lm:
        ids = lm.tokenize(PROMPT)
        plain = np.asarray(lm.logits(ids))
        with lora.Adapter.load(lm, str(adir)) as a:
            lm.attach(a)
            moved = float(np.abs(np.asarray(lm.logits(ids)) - plain).max())
            assert moved > 0.1 * np.abs(plain).max(), f"the adapter barely changes the logits ({moved})"
            compare(f"{which} + adapter {name}", lm, llm, ids, LLAMA_F32_REL)
            lm.detach(a)


def ggml_gelu(torch):
    """A module computing GELU as ggml's CPU backend does with GGML_GELU_FP16:
    0 below -10, x above 10, else table[f16(x)] with table = f16(gelu_tanh(h)) over every F16 h."""
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(all="ignore"):
        table = (np.float32(0.5) * h * (np.float32(1) + np.tanh(
            np.float32(0.7978845608028654) * h * (np.float32(1) + np.float32(0.044715) * h * h)))).astype(np.float16)

    class GGMLGelu(torch.nn.Module):
        def forward(self, x):
            v = x.detach().numpy().astype(np.float32)
            y = table[v.astype(np.float16).view(np.uint16)].astype(np.float32)
            y = np.where(v <= -10, np.float32(0), np.where(v >= 10, v, y))
            return torch.from_numpy(y)
    return GGMLGelu


@needs_llama
@pytest.mark.parametrize("name", [None, "all, rsLoRA, patterns"])
def test_llama_cpp_matches_its_own_gelu(name, tmp_path):
    """What remains between llama.cpp and liblora is llama.cpp's F16 GELU: with
    that GELU in a transformers (+ PEFT) reference, the exported files give
    llama.cpp's logits within 1e-3 on the fortunes model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base = tmp_path / "base.gguf"
    export_ok("--model", FORTUNES, "--out", base)
    model = transformers.GPT2LMHeadModel.from_pretrained(FORTUNES)
    lora_file = None
    if name:
        peft = pytest.importorskip("peft")
        spec = dict(ADAPTERS[name])
        adir = peft_adapter(tmp_path / "adapter", FORTUNES, spec.pop("targets"), seed=len(name), **spec)
        lora_file = tmp_path / "adapter.gguf"
        export_ok("--model", FORTUNES, "--adapter", adir, "--out", lora_file)
        model = peft.PeftModel.from_pretrained(model, adir)
    llm = llama_model(base, lora=lora_file)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    with torch.no_grad():
        exact = model(torch.tensor([ids])).logits[0].numpy()
        for block in (model.base_model.model if name else model).transformer.h:
            block.mlp.act = ggml_gelu(torch)()
        emulated = model(torch.tensor([ids])).logits[0].numpy()
    got = llama_logits(llm, ids)
    d_exact = float(np.abs(got - exact).max())
    d_emulated = float(np.abs(got - emulated).max())
    print(f"\nfortunes{' + adapter ' + name if name else ''}: llama.cpp vs transformers {d_exact:.2e}, "
          f"vs transformers with ggml's F16 GELU {d_emulated:.2e}")
    assert d_emulated <= LLAMA_EMULATED_TOL and d_emulated < d_exact
