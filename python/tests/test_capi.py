"""The C contract through the raw ctypes mirror: NULLs, struct_size, buffers, the thread's last error."""
import ctypes
from ctypes import byref, c_int32, c_size_t

import pytest

import lora
from lora import _capi as C

NULL_TOKEN_CALLBACK = C.lora_token_callback()  # a NULL function pointer


def test_free_accepts_null_and_null_queries_return_minus_one():
    C.lora_model_free(None)
    C.lora_adapter_free(None)
    C.lora_trainer_free(None)
    assert C.lora_adapter_n_params(None) == -1
    assert C.lora_trainer_get_step(None) == -1


def test_null_handles_are_invalid_arguments():
    info = C.lora_model_info(struct_size=ctypes.sizeof(C.lora_model_info))
    calls = [
        lambda: C.lora_model_get_info(None, byref(info)),
        lambda: C.lora_logits(None, (c_int32 * 1)(1), 1, (ctypes.c_float * 10)(), 10),
        lambda: C.lora_adapter_save(None, b"/tmp/x"),
        lambda: C.lora_trainer_step(None, (c_int32 * 2)(1, 2), None, 1, 2, None),
        lambda: C.lora_model_load(None, b"/tmp", None),
    ]
    for call in calls:
        with pytest.raises(lora.LoraError) as ei:
            call()
        assert ei.value.status == lora.LORA_INVALID_ARGUMENT


def test_out_handle_is_null_on_failure(tmp_path):
    h = C.lora_model_p()
    with pytest.raises(lora.LoraError):
        C.lora_model_load(byref(h), str(tmp_path / "missing").encode(), None)
    assert not h


def test_null_params_mean_defaults(tok_model):
    n = c_size_t()
    out = (c_int32 * 64)()
    C.lora_generate_tokens(tok_model._handle, (c_int32 * 1)(1), 1, None, NULL_TOKEN_CALLBACK, None, out, 64,
                           byref(n))
    assert 1 <= n.value <= 63


def test_struct_size_larger_than_the_library_is_rejected(tok_model):
    p = C.lora_sampling_params()
    C.lora_sampling_default_params(byref(p))
    p.struct_size += 8
    with pytest.raises(lora.LoraError) as ei:
        C.lora_generate_tokens(tok_model._handle, (c_int32 * 1)(1), 1, byref(p), NULL_TOKEN_CALLBACK, None,
                               (c_int32 * 4)(), 4, byref(c_size_t()))
    assert ei.value.status == lora.LORA_INVALID_ARGUMENT
    assert "struct_size" in ei.value.message


def test_smaller_struct_size_reads_only_the_covered_fields(tok_model):
    """A caller built against an older header: fields past struct_size take the defaults."""
    p = C.lora_sampling_params()
    C.lora_sampling_default_params(byref(p))
    p.max_new_tokens = 3
    p.stop_at_eos = 0
    p.struct_size = C.lora_sampling_params.temperature.offset  # covers max_new_tokens only
    n = c_size_t()
    C.lora_generate_tokens(tok_model._handle, (c_int32 * 1)(1), 1, byref(p), NULL_TOKEN_CALLBACK, None,
                           (c_int32 * 16)(), 16, byref(n))
    assert n.value == 3

    info = C.lora_model_info()
    info.n_embd = 777
    info.struct_size = C.lora_model_info.n_positions.offset  # struct_size + n_vocab
    C.lora_model_get_info(tok_model._handle, byref(info))
    assert info.n_vocab == 1201 and info.n_embd == 777


def test_tokenize_buffer_too_small_reports_the_count(tok_model):
    text = "Hello, world!".encode()
    n = c_size_t()
    with pytest.raises(lora.BufferTooSmallError) as ei:
        C.lora_tokenize(tok_model._handle, text, len(text), None, 0, byref(n))
    assert ei.value.status == lora.LORA_BUFFER_TOO_SMALL
    assert n.value == len(tok_model.tokenize("Hello, world!"))


def test_detokenize_buffer_too_small_reports_the_size(tok_model):
    ids = tok_model.tokenize("héllo")
    arr = (c_int32 * len(ids))(*ids)
    needed = c_size_t()
    with pytest.raises(lora.BufferTooSmallError):
        C.lora_detokenize(tok_model._handle, arr, len(ids), ctypes.create_string_buffer(2), 2, byref(needed))
    assert needed.value == len("héllo".encode())


def test_generate_can_stream_without_an_output_buffer(tok_model):
    pieces = []
    cb = C.lora_token_callback(lambda t, p, n, u: pieces.append(ctypes.string_at(p, n)) or 0)
    p = C.lora_sampling_params()
    C.lora_sampling_default_params(byref(p))
    p.max_new_tokens, p.stop_at_eos, p.seed = 5, 0, 3
    needed = c_size_t()
    C.lora_generate(tok_model._handle, b"Hello", byref(p), cb, None, None, 0, byref(needed))
    assert len(pieces) == 5 and needed.value == len(b"".join(pieces))


def test_last_error_is_per_call(tok_model):
    with pytest.raises(lora.LoraError) as ei:
        tok_model.detokenize([99999])
    assert C.lora_last_error().decode() == ei.value.message != ""
    tok_model.detokenize([1])  # a successful fallible call clears it
    assert C.lora_last_error() == b""


def test_callback_stop_wins_over_a_small_buffer(tok_model):
    cb = C.lora_token_callback(lambda t, p, n, u: 1)
    p = C.lora_sampling_params()
    C.lora_sampling_default_params(byref(p))
    p.stop_at_eos = 0
    with pytest.raises(lora.LoraError) as ei:
        C.lora_generate(tok_model._handle, b"Hello", byref(p), cb, None, ctypes.create_string_buffer(1), 1,
                        byref(c_size_t()))
    assert ei.value.status == lora.LORA_ABORTED


def test_binding_reports_abort_even_when_the_buffer_was_small(tok_model, monkeypatch):
    """The binding's own fallback: a stop during generation is reported as a stop whatever the library said."""
    from lora import model as model_mod
    calls = []
    real = model_mod.C.lora_generate

    def tiny_buffer(h, prompt, params, cb, user, out, capacity, needed):
        calls.append(capacity)
        return real(h, prompt, params, cb, user, ctypes.create_string_buffer(1), 1, needed)

    monkeypatch.setattr(model_mod.C, "lora_generate", tiny_buffer)
    assert tok_model.generate("Hello", max_new_tokens=10, stop_at_eos=False,
                              on_token=lambda t, p: False).stop_reason == "callback"
    # Without a stop, a too-small buffer is recovered from (the streamed pieces, or a second run).
    text = tok_model.generate("Hello", max_new_tokens=10, seed=2, stop_at_eos=False)
    monkeypatch.undo()
    assert text == tok_model.generate("Hello", max_new_tokens=10, seed=2, stop_at_eos=False)
