"""Model.export_gguf / Adapter.export_gguf (lora_model_export_gguf, lora_adapter_export_gguf).
Tests/gguf checks the same files tensor by tensor and runs them in llama.cpp."""
import struct

import pytest

import lora
from conftest import fixture


def header(path):
    with open(path, "rb") as f:
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
    return magic, version, n_tensors, n_kv


def test_model_and_adapter_export(tok_model, model_a, tmp_path):
    tok_model.export_gguf(tmp_path / "m.gguf")
    tok_model.export_gguf(str(tmp_path / "h.gguf"), dtype="f16")
    assert header(tmp_path / "m.gguf")[:3] == (b"GGUF", 3, 28)
    assert (tmp_path / "h.gguf").stat().st_size < (tmp_path / "m.gguf").stat().st_size
    with lora.Adapter.load(model_a, fixture("lora", "all")) as a:
        a.export_gguf(tmp_path / "a.gguf")
    assert header(tmp_path / "a.gguf")[:3] == (b"GGUF", 3, 16)
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(tmp_path / "a.gguf")
    assert r.fields["general.type"].contents() == "adapter"
    assert r.fields["adapter.lora.alpha"].contents() == 8.0
    assert [t.name for t in r.tensors][:2] == ["blk.0.attn_qkv.weight.lora_a", "blk.0.attn_qkv.weight.lora_b"]


def test_export_errors(tok_model, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        tok_model.export_gguf(tmp_path / "x.gguf", dtype="q8_0")
    with lora.Model.load(fixture("gpt2-b")) as b:  # erf GELU: not llama.cpp's gpt2 graph
        with pytest.raises(lora.UnsupportedError, match="gelu_new"):
            b.export_gguf(tmp_path / "x.gguf")
    with pytest.raises(lora.LoraIOError):
        tok_model.export_gguf(tmp_path / "missing" / "x.gguf")
    assert list(tmp_path.iterdir()) == []
