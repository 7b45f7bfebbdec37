"""Model: info, tokens, logits (vs transformers' fixtures), generation, errors."""
import math
import os

import pytest

import lora
from conftest import fixture
from helpers import LOGITS_TOLERANCE, flatten, max_abs_diff, np, read_safetensors, shape_of


# ---- info ----------------------------------------------------------------------

def test_info(tok_model):
    i = tok_model.info
    assert (i.n_vocab, i.n_positions, i.n_embd, i.n_layer, i.n_head, i.n_inner) == (1201, 64, 32, 2, 2, 128)
    assert i.has_tokenizer is True
    assert i.eos_token == 1200
    assert isinstance(i.blas_core, str) and i.blas_core
    assert i.dtype == "f32"
    assert i.kv_cache_dtype == "f32"
    # wte + wpe + 2 blocks + ln_f (tied head counted once)
    E, V, P, I = 32, 1201, 64, 128
    block = 2 * 2 * E + (E * 3 * E + 3 * E) + (E * E + E) + (E * I + I) + (I * E + E)
    assert i.n_params == V * E + P * E + 2 * block + 2 * E
    assert i["n_vocab"] == 1201 and i.as_dict()["n_layer"] == 2
    assert set(i.keys()) == {"n_vocab", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "n_params",
                             "has_tokenizer", "eos_token", "blas_core", "dtype", "kv_cache_dtype"}


def test_info_without_tokenizer(model_a):
    i = model_a.info
    assert i.has_tokenizer is False
    assert (i.n_vocab, i.n_embd) == (101, 48)


# ---- load errors -------------------------------------------------------------------

def test_load_missing_directory_is_io_error(tmp_path):
    with pytest.raises(lora.LoraError) as ei:
        lora.Model.load(str(tmp_path / "does-not-exist"))
    assert ei.value.status == lora.LORA_IO_ERROR


def test_load_malformed_config_is_invalid_file(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text("{ not json")
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(lora.LoraError) as ei:
        lora.Model.load(d)
    assert ei.value.status == lora.LORA_INVALID_FILE


def test_load_bad_arguments():
    with pytest.raises(ValueError):
        lora.Model.load("a\0b")
    with pytest.raises(TypeError):
        lora.Model.load(42)
    with pytest.raises(lora.LoraError) as ei:
        lora.Model.load(fixture("gpt2-tok"), n_threads=-1)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(OverflowError):
        lora.Model.load(fixture("gpt2-tok"), n_threads=2 ** 40)


def test_load_accepts_pathlike_and_threads():
    from pathlib import Path
    with lora.Model.load(Path(fixture("gpt2-tok")), n_threads=1) as m:
        assert m.info.n_vocab == 1201


# ---- tokens ------------------------------------------------------------------------------

def test_tokenize_matches_transformers_fixture(tok_model):
    meta, t = read_safetensors(fixture("expected", "gpt2-tok.safetensors"))
    assert tok_model.tokenize(meta["text"]) == t["ids"].values()


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "line\nbreaks\r\nand\ttabs",
    "café naïve Ünïcödé",
    "日本語のテキスト",
    "emoji 🎉🚀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "special <|endoftext|> token",
    "",
])
def test_tokenize_detokenize_round_trip(tok_model, text):
    ids = tok_model.tokenize(text)
    assert all(isinstance(i, int) and 0 <= i < 1201 for i in ids)
    assert tok_model.detokenize(ids) == text


def test_special_token_is_one_id(tok_model):
    ids = tok_model.tokenize("<|endoftext|>")
    assert ids == [tok_model.info.eos_token]


def test_detokenize_accepts_tuples_generators_and_arrays(tok_model):
    ids = tok_model.tokenize("Hello, world!")
    text = tok_model.detokenize(ids)
    assert tok_model.detokenize(tuple(ids)) == text
    assert tok_model.detokenize(i for i in ids) == text
    if np is not None:
        assert tok_model.detokenize(np.array(ids, dtype=np.int64)) == text


def test_detokenize_partial_utf8_becomes_replacement_char(tok_model):
    ids = tok_model.tokenize("日")
    # Bytes of one character split over tokens: a prefix alone is invalid UTF-8.
    if len(ids) > 1:
        assert "\ufffd" in tok_model.detokenize(ids[:1])


def test_long_detokenize_grows_its_buffer(tok_model):
    text = "🎉" * 200 + " end"
    ids = tok_model.tokenize(text)
    assert tok_model.detokenize(ids) == text


def test_token_errors(tok_model, model_a):
    with pytest.raises(lora.LoraError) as ei:
        tok_model.detokenize([5000])
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(lora.LoraError) as ei:
        tok_model.detokenize([-1])
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(OverflowError):
        tok_model.detokenize([2 ** 40])
    with pytest.raises(TypeError):
        tok_model.detokenize([1.5])
    with pytest.raises(TypeError):
        tok_model.detokenize("abc")
    with pytest.raises(lora.LoraError) as ei:
        model_a.tokenize("hi")
    assert ei.value.status == lora.LORA_WRONG_STATE
    assert isinstance(ei.value, lora.WrongStateError)
    with pytest.raises(lora.LoraError) as ei:
        model_a.detokenize([1, 2])
    assert ei.value.status == lora.LORA_WRONG_STATE


# ---- logits ------------------------------------------------------------------------------------

def test_logits_match_transformers_fixture(tok_model):
    meta, t = read_safetensors(fixture("expected", "gpt2-tok.safetensors"))
    ids = t["ids"].values()
    got = tok_model.logits(ids)
    assert shape_of(got) == tuple(t["logits"].shape) == (len(ids), 1201)
    assert max_abs_diff(got, t["logits"].values()) < LOGITS_TOLERANCE


@pytest.mark.parametrize("name", ["gpt2-a", "gpt2-b", "gpt2-a-f16", "gpt2-a-bf16"])
def test_other_models_match_transformers_fixtures(name):
    """Logits of single sequences, padded batches (both sides) and greedy generation."""
    meta, t = read_safetensors(fixture("expected", f"{name}.safetensors"))
    with lora.Model.load(fixture(name)) as m:
        k = 0
        while f"seq{k}.ids" in t:
            got = m.logits(t[f"seq{k}.ids"].values())
            assert max_abs_diff(got, t[f"seq{k}.logits"].values()) < LOGITS_TOLERANCE, f"seq{k}"
            k += 1
        assert k > 0
        for side in ("left", "right"):
            ids, mask = t[f"batch_{side}.ids"].rows(), t[f"batch_{side}.mask"].rows()
            seqs = [[i for i, keep in zip(r, mr) if keep] for r, mr in zip(ids, mask)]
            got = m.logits_batch(seqs, left_padding=(side == "left"))
            assert max_abs_diff(got, t[f"batch_{side}.logits"].values()) < LOGITS_TOLERANCE, side
        k = 0
        while f"greedy{k}.prompt" in t:
            prompt, want = t[f"greedy{k}.prompt"].values(), t[f"greedy{k}.output"].values()
            new = m.generate_tokens(prompt, max_new_tokens=len(want) - len(prompt), temperature=0,
                                    stop_at_eos=False)
            assert prompt + new == want, f"greedy{k}"
            k += 1


def test_logits_types(tok_model):
    out = tok_model.logits([1, 2, 3])
    if np is not None:
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 1201)
    else:
        assert isinstance(out, list) and len(out) == 3 and all(len(r) == 1201 for r in out)
        assert isinstance(out[0][0], float)


def test_logits_errors(tok_model):
    for bad in ([], [1201], [-5], [0] * 65):
        with pytest.raises(lora.LoraError) as ei:
            tok_model.logits(bad)
        assert ei.value.status == lora.LORA_INVALID_ARGUMENT, bad
    tok_model.logits([0] * 64)  # exactly n_positions is fine


def test_logits_batch_padding(tok_model):
    a = tok_model.tokenize("The quick brown fox jumps")
    b = tok_model.tokenize("Hello")
    V = 1201
    for left in (True, False):
        out = tok_model.logits_batch([a, b], left_padding=left)
        assert shape_of(out) == (2, len(a), V)
        assert max_abs_diff(out[0], tok_model.logits(a)) < LOGITS_TOLERANCE
        pad = len(a) - len(b)
        rows = out[1][pad:] if left else out[1][:len(b)]
        padding = out[1][:pad] if left else out[1][len(b):]
        assert max_abs_diff(rows, tok_model.logits(b)) < LOGITS_TOLERANCE
        assert all(v == 0.0 for v in flatten(padding))


def test_logits_batch_errors(tok_model):
    with pytest.raises(lora.LoraError) as ei:
        tok_model.logits_batch([])
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(lora.LoraError) as ei:
        tok_model.logits_batch([[1, 2], []])
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(lora.LoraError) as ei:
        tok_model.logits_batch([[1, 2], [0] * 65])
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT


# ---- generation -------------------------------------------------------------------------

def test_generation_is_deterministic_with_a_seed(tok_model):
    kw = dict(max_new_tokens=20, temperature=0.9, top_k=50, top_p=0.95, stop_at_eos=False)
    a = tok_model.generate("Hello, world!", seed=7, **kw)
    b = tok_model.generate("Hello, world!", seed=7, **kw)
    assert a == b and a
    others = {tok_model.generate("Hello, world!", seed=s, **kw) for s in range(1, 6)}
    assert len(others | {a}) > 1, "different seeds should (almost surely) give different text"


def test_greedy_generation_matches_argmax_of_logits(tok_model):
    prompt = tok_model.tokenize("The quick brown")
    out = tok_model.generate_tokens(prompt, max_new_tokens=5, temperature=0, stop_at_eos=False)
    seq = list(prompt)
    for t in out:
        row = flatten(tok_model.logits(seq)[len(seq) - 1])
        assert t == max(range(len(row)), key=row.__getitem__)
        seq.append(t)


def test_streaming_pieces_concatenate_to_the_result(tok_model):
    for seed in range(5):
        pieces, ids = [], []

        def on_token(token_id, piece):
            assert isinstance(token_id, int) and isinstance(piece, str)
            ids.append(token_id)
            pieces.append(piece)

        text = tok_model.generate("Once upon a time", max_new_tokens=24, seed=seed, stop_at_eos=False,
                                  on_token=on_token)
        assert len(ids) == 24
        assert "".join(pieces) == text, f"seed {seed}"


def test_streaming_pieces_concatenate_when_generation_ends_mid_character(tok_model):
    mismatches = []
    for seed in range(150):
        pieces = []
        text = tok_model.generate("日本", max_new_tokens=3, seed=seed, stop_at_eos=False,
                                  on_token=lambda t, p: pieces.append(p))
        if "".join(pieces) != text:
            mismatches.append((seed, pieces, text))
    assert not mismatches, mismatches[:3]


def test_text_and_token_generation_agree(tok_model):
    kw = dict(max_new_tokens=16, seed=3, temperature=0.8, stop_at_eos=False)
    text = tok_model.generate("Hello, world!", **kw)
    ids = tok_model.generate_tokens(tok_model.tokenize("Hello, world!"), **kw)
    assert len(ids) == 16
    assert tok_model.detokenize(ids) == text
    if np is not None:
        assert tok_model.generate_tokens(np.array(tok_model.tokenize("Hello, world!")), **kw) == ids


def test_on_token_ids_match_generate_tokens(tok_model):
    seen = []
    ids = tok_model.generate_tokens([1, 2, 3], max_new_tokens=8, seed=1, stop_at_eos=False,
                                    on_token=lambda t, p: seen.append(t))
    assert seen == ids


def test_max_new_tokens_zero(tok_model):
    assert tok_model.generate("Hello", max_new_tokens=0) == ""
    assert tok_model.generate_tokens([1, 2], max_new_tokens=0) == []


def test_generation_stops_at_n_positions(tok_model):
    prompt = [5] * 60
    out = tok_model.generate_tokens(prompt, max_new_tokens=100, seed=1, stop_at_eos=False)
    assert len(out) == 4


def test_stop_strings(tok_model):
    full = tok_model.generate("The quick brown", max_new_tokens=30, temperature=0, stop_at_eos=False)
    assert len(full) > 6
    stop = full[3:6]
    short = tok_model.generate("The quick brown", max_new_tokens=30, temperature=0, stop_at_eos=False,
                               stop=[stop, "never-appears-xyz"])
    assert stop in short and full.startswith(short) and len(short) <= len(full)
    assert tok_model.generate("The quick brown", max_new_tokens=30, temperature=0, stop_at_eos=False,
                              stop=stop) == short


def test_callback_stop_is_quiet(tok_model):
    """A callback returning False stops generation without an exception; the result says why."""
    pieces = []

    def on_token(token_id, piece):
        pieces.append(piece)
        return len(pieces) < 3

    text = tok_model.generate("Hello", max_new_tokens=20, seed=1, stop_at_eos=False, on_token=on_token)
    assert len(pieces) == 3
    assert text == "".join(pieces) and text.stop_reason == "callback"
    full = tok_model.generate("Hello", max_new_tokens=20, seed=1, stop_at_eos=False)
    assert full.stop_reason == "completed" and full.startswith(text)

    got = []
    ids = tok_model.generate_tokens([1, 2], max_new_tokens=20, seed=1, stop_at_eos=False,
                                    on_token=lambda t, p: got.append(t) or len(got) < 2)
    assert ids == got and len(got) == 2 and ids.stop_reason == "callback"


def test_stream_yields_the_pieces_of_the_text(tok_model):
    full = tok_model.generate("Hello", max_new_tokens=12, seed=4, stop_at_eos=False)
    pieces = list(tok_model.generate("Hello", max_new_tokens=12, seed=4, stop_at_eos=False, stream=True))
    assert len(pieces) == 12 and "".join(pieces) == full
    # Leaving the loop early stops the generation.
    it = tok_model.generate("Hello", max_new_tokens=40, seed=4, stop_at_eos=False, stream=True)
    first = next(it)
    it.close()
    assert full.startswith(first)
    with pytest.raises(ValueError):
        tok_model.generate("Hello", stream=True, on_token=print)


def test_model_constructor_and_pretrained_names(tmp_path):
    from conftest import fixture
    with lora.Model(fixture("gpt2-tok")) as m, lora.Model.from_pretrained(fixture("gpt2-tok")) as m2:
        assert m.info == m2.info
        a = lora.Adapter.create(m, r=2)
        a.save_pretrained(tmp_path / "ad")
        b = lora.Adapter.from_pretrained(m, tmp_path / "ad")
        assert b.n_params == a.n_params
        # Attaching twice (a Trainer attaches its adapter) sets the scale instead of failing.
        m.attach(b)
        m.attach(b, 0.5)
    with pytest.raises(FileNotFoundError) as ei:
        lora.Model(tmp_path / "missing")
    assert isinstance(ei.value, lora.LoraIOError) and isinstance(ei.value, OSError)
    with lora.Model(fixture("gpt2-tok")) as m, pytest.raises(FileNotFoundError):
        lora.Adapter.from_pretrained(m, tmp_path / "missing")


def test_callback_returning_true_or_none_continues(tok_model):
    n = []
    tok_model.generate("Hi", max_new_tokens=5, stop_at_eos=False, on_token=lambda t, p: n.append(t) or True)
    assert len(n) == 5


def test_exception_in_callback_propagates(tok_model):
    calls = []

    class Boom(Exception):
        pass

    def on_token(token_id, piece):
        calls.append(token_id)
        raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback"):
        tok_model.generate("Hello", max_new_tokens=20, stop_at_eos=False, on_token=on_token)
    assert len(calls) == 1, "generation must stop at the first exception"
    with pytest.raises(KeyError):
        tok_model.generate_tokens([1, 2, 3], max_new_tokens=5, on_token=lambda t, p: {}[t])
    # The model is still usable afterwards.
    assert len(tok_model.generate_tokens([1, 2, 3], max_new_tokens=3, stop_at_eos=False)) == 3


@pytest.mark.parametrize("kw", [
    dict(temperature=math.nan), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5),
    dict(top_k=-1), dict(max_new_tokens=-1), dict(repetition_penalty=0.0), dict(repetition_penalty=math.inf),
])
def test_bad_sampling_params(tok_model, kw):
    with pytest.raises(lora.LoraError) as ei:
        tok_model.generate("Hello", **kw)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(lora.LoraError) as ei:
        tok_model.generate_tokens([1, 2], **kw)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT


def test_python_side_argument_errors(tok_model):
    with pytest.raises(OverflowError):
        tok_model.generate("Hello", seed=-1)
    with pytest.raises(OverflowError):
        tok_model.generate("Hello", max_new_tokens=2 ** 31)
    with pytest.raises(TypeError):
        tok_model.generate("Hello", max_new_tokens=1.5)
    with pytest.raises(ValueError):
        tok_model.generate("Hel\0lo")
    with pytest.raises(TypeError):
        tok_model.generate(123)


def test_generation_errors(tok_model, model_a):
    with pytest.raises(lora.LoraError) as ei:
        tok_model.generate("", max_new_tokens=3)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(lora.LoraError) as ei:
        tok_model.generate_tokens([1] * 64, max_new_tokens=3)
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    with pytest.raises(lora.LoraError) as ei:
        model_a.generate("Hello")
    assert ei.value.status == lora.LORA_WRONG_STATE
    # Token generation works without a tokenizer (pieces are empty).
    pieces = []
    out = model_a.generate_tokens([1, 2, 3], max_new_tokens=4, stop_at_eos=False,
                                  on_token=lambda t, p: pieces.append(p))
    assert len(out) == 4 and pieces == [""] * 4


def test_save_and_reload(tok_model, tmp_path):
    out = tmp_path / "saved"
    tok_model.save(out)
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    with lora.Model.load(out) as again:
        assert again.info.has_tokenizer
        ids = tok_model.tokenize("Hello, world!")
        assert again.tokenize("Hello, world!") == ids
        assert max_abs_diff(again.logits(ids), tok_model.logits(ids)) == 0.0


def test_save_to_unwritable_place_is_io_error(tok_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(lora.LoraError) as ei:
        tok_model.save(blocker / "sub")
    assert ei.value.status == lora.LORA_IO_ERROR


def test_numpy_mode_is_what_the_run_asked_for():
    from lora import _convert
    assert _convert.has_numpy() == (np is not None)
    assert _convert.has_numpy() != bool(os.environ.get("LORA_TEST_NO_NUMPY"))


def test_liblora_calls_inside_a_callback(tok_model):
    """A callback may call the library (even failing calls); the outer status and message stay right."""
    decoded = []

    def on_token(token_id, piece):
        decoded.append(tok_model.detokenize([token_id]))
        try:
            tok_model.detokenize([99999])
        except lora.LoraError:
            pass
        return len(decoded) < 4

    text = tok_model.generate("Hello", max_new_tokens=10, seed=5, stop_at_eos=False, on_token=on_token)
    assert len(decoded) == 4 and text.stop_reason == "callback"
    # The failing calls inside the callback change nothing: the same text as a plain run of 4 tokens.
    assert text == tok_model.generate("Hello", max_new_tokens=4, seed=5, stop_at_eos=False)
    with pytest.raises(TypeError):
        tok_model.generate("Hello", on_token="not callable")


def test_concurrent_logits_and_generation(tok_model):
    """One model may run logits/generate from several threads at once (ctypes releases the GIL)."""
    import threading
    ids = tok_model.tokenize("The quick brown fox jumps over the lazy dog.")
    want_logits = flatten(tok_model.logits(ids))
    want_text = tok_model.generate("Hello", max_new_tokens=12, seed=9, stop_at_eos=False)
    errors = []

    def work():
        try:
            for _ in range(5):
                assert flatten(tok_model.logits(ids)) == want_logits
                assert tok_model.generate("Hello", max_new_tokens=12, seed=9, stop_at_eos=False) == want_text
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("dtype", ["bf16", "f16", "q8_0"])
def test_dtype_matches_transformers_on_rounded_weights(dtype, tmp_path):
    """dtype= stores the weight matrices reduced (issue #16): logits within the
    reference tolerance of transformers on the same rounded weights, and a
    saved model loads back in its dtype without asking."""
    _, t = read_safetensors(fixture("lowp", f"expected-{dtype}.safetensors"))
    ids = t["seq2.ids"].values()
    want = t["seq2.logits"].values()
    with lora.Model.load(fixture("gpt2-a"), dtype=dtype) as m:
        assert m.info.dtype == dtype
        assert max_abs_diff(m.logits(ids), want) < LOGITS_TOLERANCE
        m.save(tmp_path / "saved")
    with lora.Model.load(tmp_path / "saved") as again:
        assert again.info.dtype == dtype
        assert max_abs_diff(again.logits(ids), want) < LOGITS_TOLERANCE


def test_dtype_default_and_errors():
    with lora.Model.load(fixture("gpt2-a")) as m:
        assert m.info.dtype == "f32"
    for bad in ("int4", 3, ""):
        with pytest.raises(ValueError):
            lora.Model.load(fixture("gpt2-a"), dtype=bad)


def test_bf16_kv_cache_matches_transformers():
    """kv_cache_dtype="bf16": greedy text through generate and the engine equals
    transformers with keys and values rounded to bf16 (lowp/expected-kv-bf16);
    other dtypes are refused."""
    _, t = read_safetensors(fixture("lowp", "expected-kv-bf16.safetensors"))
    with lora.Model.load(fixture("gpt2-a"), kv_cache_dtype="bf16") as m:
        assert m.info.kv_cache_dtype == "bf16"
        with lora.Engine(m, max_sequences=2) as engine:
            requests = []
            for k in range(2):
                prompt = [int(i) for i in t[f"greedy{k}.prompt"].values()]
                want = [int(i) for i in t[f"greedy{k}.output"].values()]
                n = len(want) - len(prompt)
                assert m.generate_tokens(prompt, max_new_tokens=n, temperature=0, stop_at_eos=False) == want[len(prompt):]
                requests.append((engine.submit(prompt, max_new_tokens=n, temperature=0, stop_at_eos=False),
                                 want[len(prompt):]))
            engine.run()
            for r, want_new in requests:
                assert r.tokens == want_new
    with lora.Model.load(fixture("gpt2-a")) as m:
        assert m.info.kv_cache_dtype == "f32"
    for bad in ("f16", "q8_0", None, 1):
        with pytest.raises(ValueError):
            lora.Model.load(fixture("gpt2-a"), kv_cache_dtype=bad)


def _rss_growth_of_load(path, dtype, warm_up):
    """How far a load of `path` with `dtype` plus the logits of three tokens
    raises the peak RSS (bytes) of a fresh process: after a warm-up load of
    `warm_up` (libraries, BLAS buffers), the kernel's high-water mark is reset
    (/proc/self/clear_refs "5"), so nothing before the load can hide it."""
    import subprocess
    import sys
    code = ("import sys, lora\n"
            "def status(key):\n"
            "    with open('/proc/self/status') as f:\n"
            "        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))\n"
            "with lora.Model.load(sys.argv[3], n_threads=1, dtype=sys.argv[2]) as m:\n"
            "    m.logits([1, 2, 3])\n"
            "with open('/proc/self/clear_refs', 'w') as f:\n"
            "    f.write('5')\n"
            "before = status('VmRSS:')\n"
            "m = lora.Model.load(sys.argv[1], n_threads=1, dtype=sys.argv[2])\n"
            "m.logits([1, 2, 3])\n"
            "print(status('VmHWM:') - before)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), dtype, str(warm_up)], env=os.environ.copy(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def _write_f32_model(path, n_vocab, n_embd, n_layer, n_positions):
    """A GPT-2 checkpoint with random F32 weights (uniform ±0.05), written
    as transformers does (no tied lm_head), without numpy or torch."""
    import json
    import random
    import struct
    rnd = random.Random(7)
    C = n_embd
    shapes = {"wte.weight": [n_vocab, C], "wpe.weight": [n_positions, C], "ln_f.weight": [C], "ln_f.bias": [C]}
    for l in range(n_layer):
        h = f"h.{l}."
        shapes.update({h + "ln_1.weight": [C], h + "ln_1.bias": [C], h + "ln_2.weight": [C], h + "ln_2.bias": [C],
                       h + "attn.c_attn.weight": [C, 3 * C], h + "attn.c_attn.bias": [3 * C],
                       h + "attn.c_proj.weight": [C, C], h + "attn.c_proj.bias": [C],
                       h + "mlp.c_fc.weight": [C, 4 * C], h + "mlp.c_fc.bias": [4 * C],
                       h + "mlp.c_proj.weight": [4 * C, C], h + "mlp.c_proj.bias": [C]})
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    # One random row of 4096 values repeated: random enough for the kernels, fast to write.
    block = struct.pack("<4096f", *(rnd.uniform(-0.05, 0.05) for _ in range(4096)))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left > 0:
            chunk = block[:min(left, len(block))]
            f.write(chunk)
            left -= len(chunk)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "vocab_size": n_vocab, "n_embd": C, "n_head": 2, "n_layer": n_layer,
                   "n_positions": n_positions, "tie_word_embeddings": True}, f)
    return sum(math.prod(s) for n, s in shapes.items() if n.endswith("weight") and len(s) == 2)


def test_loading_holds_only_the_converted_weights(tmp_path):
    """Peak RSS of loading (issue #16): a reduced-precision load converts a
    chunk at a time and hands the file's pages back as it goes, so neither
    the file nor an F32 copy of even the largest matrix (wte, 51 MB here) is
    resident beside the converted weights. Each load's growth of the peak
    must stay within its weights' bytes plus 10 MiB (logits, scratch,
    allocator: 3 to 4 MiB measured); a whole-tensor copy or the file's pages
    kept resident add 45 MiB here (measured before the chunked load)."""
    n_matrix = _write_f32_model(tmp_path / "big", n_vocab=200_000, n_embd=64, n_layer=2, n_positions=64)
    _write_f32_model(tmp_path / "tiny", n_vocab=1000, n_embd=64, n_layer=2, n_positions=64)
    per_weight = {"f32": 4, "bf16": 2, "f16": 2, "q8_0": 34 / 32}
    slack = 10 << 20
    for dtype, size in per_weight.items():
        grown = _rss_growth_of_load(tmp_path / "big", dtype, warm_up=tmp_path / "tiny")
        assert grown <= n_matrix * size + slack, f"{dtype}: peak RSS grew {grown / 2**20:.1f} MiB for {n_matrix * size / 2**20:.1f} MiB of weights"


GPT2_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data",
                              "gpt2-tokenizer")


@pytest.mark.skipif(not os.path.exists(os.path.join(GPT2_TOKENIZER, "vocab.json")),
                    reason="the GPT-2 tokenizer files are not available")
def test_real_tokenizer_stays_small_in_memory(tmp_path):
    """GPT-2's tokenizer (50,257 tokens, 50,000 merges) kept ~12 MiB resident
    once loaded: a small heap block per token string, per decoded token and
    per dictionary key, plus the freed blocks of reading the files. Packed
    tables and handing the freed pages back: a model with the tokenizer must
    stay within 8 MiB of the same model without it (resident, after load;
    16.0 MiB before, 4.4 after)."""
    import subprocess
    import sys
    _write_f32_model(tmp_path / "bare", n_vocab=50257, n_embd=64, n_layer=1, n_positions=64)
    os.makedirs(tmp_path / "tok")
    for name in ("config.json", "model.safetensors"):
        os.symlink(tmp_path / "bare" / name, tmp_path / "tok" / name)
    for name in ("vocab.json", "merges.txt"):
        os.symlink(os.path.join(GPT2_TOKENIZER, name), tmp_path / "tok" / name)
    code = ("import sys, lora\n"
            "m = lora.Model.load(sys.argv[1], n_threads=1)\n"
            "assert m.info.has_tokenizer == (sys.argv[2] == '1')\n"
            "m.logits([1, 2, 3])\n"
            "with open('/proc/self/status') as f:\n"
            "    print(next(int(l.split()[1]) for l in f if l.startswith('VmRSS:')))\n")

    def resident_kib(directory, has_tokenizer):
        out = subprocess.run([sys.executable, "-c", code, str(directory), has_tokenizer], env=os.environ.copy(),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    growth = resident_kib(tmp_path / "tok", "1") - resident_kib(tmp_path / "bare", "0")
    assert growth <= 8 * 1024, f"the tokenizer keeps {growth / 1024:.1f} MiB resident"
