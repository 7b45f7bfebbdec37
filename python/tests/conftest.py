"""Shared fixtures of the binding's tests.

LORA_TEST_NO_NUMPY=1 hides numpy from the binding (and the tests) so the
pure-Python code paths run on a machine that has numpy installed.
LORA_FIXTURES overrides the fixture folder (default: Tests/LoRATests/Fixtures
of the repository that holds this python/ folder).
"""
import os
import sys
from pathlib import Path

import pytest

if os.environ.get("LORA_TEST_NO_NUMPY"):
    sys.modules["numpy"] = None  # `import numpy` now raises ImportError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("LORA_FIXTURES", REPO / "Tests" / "LoRATests" / "Fixtures"))

import lora  # noqa: E402  (after the numpy switch)


def fixture(*parts) -> str:
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"missing test fixture {p} (set LORA_FIXTURES)")
    return str(p)


@pytest.fixture
def tok_model():
    """gpt2-tok: a tiny GPT-2 with the fixture tokenizer (vocab 1201, 64 positions)."""
    with lora.Model.load(fixture("gpt2-tok")) as m:
        yield m


@pytest.fixture
def model_a():
    """gpt2-a: a tiny GPT-2 without tokenizer (vocab 101, n_embd 48), base of the PEFT fixtures."""
    with lora.Model.load(fixture("gpt2-a")) as m:
        yield m


@pytest.fixture(scope="session")
def lora_expected():
    from helpers import read_safetensors
    return read_safetensors(fixture("lora", "expected.safetensors"))


@pytest.fixture
def text_file(tmp_path):
    """A small training text (a few hundred tokens of the fixture tokenizer)."""
    lines = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello, world! A fool and his money are soon parted.",
        "The best way to predict the future is to invent it.",
        "Ünïcödé text: café, naïve, 日本語, emoji 🎉.",
    ]
    p = tmp_path / "train.txt"
    p.write_text("\n".join(lines * 2) + "\n", encoding="utf-8")
    return str(p)


def pytest_report_header(config):
    from lora import _convert
    return [f"lora package: {os.path.dirname(lora.__file__)}",
            f"liblora: {lora.library_path} (version {lora.version()}, ABI {lora.abi_version()})",
            f"numpy: {'yes' if _convert.has_numpy() else 'no'}"]
