"""Optional: Model.logits and tokenize against transformers itself (skipped without torch/transformers)."""
import os

import pytest

from conftest import fixture
from helpers import LOGITS_TOLERANCE, max_abs_diff

if os.environ.get("LORA_TEST_NO_NUMPY"):
    pytest.skip("torch needs numpy, hidden in this run", allow_module_level=True)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "café naïve 日本語 🎉 <|endoftext|> tail",
    "  spaces\n\nand\tnewlines  ",
]


@pytest.fixture(scope="module")
def hf():
    path = fixture("gpt2-tok")
    model = transformers.GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float32)
    model.eval()
    tok = transformers.GPT2TokenizerFast.from_pretrained(path)
    return model, tok


@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_matches_transformers(tok_model, hf, text):
    _, tok = hf
    assert tok_model.tokenize(text) == tok(text)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_logits_match_transformers(tok_model, hf, text):
    model, tok = hf
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].float()
    assert max_abs_diff(tok_model.logits(ids), want.reshape(-1).tolist()) < LOGITS_TOLERANCE
