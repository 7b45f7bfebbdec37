#!/usr/bin/env python3
"""Writes the tokenizer fixtures in Tests/LoRATests/Fixtures/tokenizer/.

Trains a small GPT-2-style byte-level BPE with Hugging Face `tokenizers` on the
English text of the installed `fortunes` files, saves it the three ways a GPT-2
tokenizer ships (vocab.json + merges.txt, tokenizer.json with pair merges, and a
tokenizer.json with legacy "a b" merges), and records the ids that Hugging Face
gives for a test corpus. Deterministic: running it twice writes the same bytes.

    python3 scripts/make_tokenizer_fixtures.py

Files written:
  vocab.json, merges.txt    GPT-2 layout; "<|endoftext|>" is the last id.
  tokenizer.json            as `tokenizers` saves it (pair merges; "<|endoftext|>"
                            only in added_tokens, not in model.vocab).
  tokenizer_legacy.json     the same model with "a b" merges and "<|endoftext|>"
                            also in model.vocab (like the hub's gpt2 file).
  tokenizer_extra.json      add_prefix_space=true plus extra added tokens
                            (a special prefix of "<|endoftext|>", tokens with a
                            space and with non-ASCII letters).
  cases.json                {"encode": [{"text", "ids"}], "decode": [{"ids", "text"}]}
                            for the first three files (all give the same ids).
  cases_extra.json          the same for tokenizer_extra.json.
  scalar_classes.json       how the GPT-2 pre-tokenizer classifies every Unicode
                            scalar (letter/number/space/other) as run starts.
"""
import glob
import json
import os
import random

from tokenizers import AddedToken, ByteLevelBPETokenizer, Tokenizer, pre_tokenizers
from transformers import GPT2TokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "LoRATests", "Fixtures", "tokenizer")
FORTUNES = "/usr/share/games/fortunes"
LICENSES = "/usr/share/common-licenses"
VOCAB_SIZE = 1200
EOT = "<|endoftext|>"


def bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BYTE_CHAR = bytes_to_unicode()
CHAR_BYTE = {c: b for b, c in BYTE_CHAR.items()}


def training_files():
    names = sorted(os.listdir(FORTUNES))
    # The plain files; `.dat` are indexes and `.u8` are symlinks to the plain ones.
    return [os.path.join(FORTUNES, n) for n in names if "." not in n
            and os.path.isfile(os.path.join(FORTUNES, n))]


def train():
    tok = ByteLevelBPETokenizer()  # add_prefix_space=False, like GPT-2
    tok.train(training_files(), vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False)
    tok.add_special_tokens([EOT])  # gets the last id, like GPT-2's 50256
    return json.loads(tok.to_str())


def dump_json(path, obj, indent=None):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def write_model_files(spec):
    model = spec["model"]
    vocab = dict(model["vocab"])
    eot_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == EOT)
    vocab[EOT] = eot_id
    # The slow-tokenizer layout: sorted keys, 2-space indent.
    with open(os.path.join(OUT, "vocab.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in model["merges"]:
            f.write(f"{a} {b}\n")

    assert all(isinstance(m, list) for m in model["merges"]), "expected pair merges"
    dump_json(os.path.join(OUT, "tokenizer.json"), spec, indent=2)

    legacy = json.loads(json.dumps(spec))
    legacy["model"]["merges"] = [f"{a} {b}" for a, b in model["merges"]]
    legacy["model"]["vocab"] = vocab  # "<|endoftext|>" in both places, as in gpt2's file
    dump_json(os.path.join(OUT, "tokenizer_legacy.json"), legacy, indent=2)

    extra = Tokenizer.from_str(json.dumps(spec))
    extra.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    extra.add_special_tokens([AddedToken("<|endof", special=True)])
    extra.add_tokens([AddedToken("New York", special=False), AddedToken("déjà", special=False)])
    extra_spec = json.loads(extra.to_str())
    dump_json(os.path.join(OUT, "tokenizer_extra.json"), extra_spec, indent=2)
    return vocab


def handwritten_cases():
    return [
        "", " ", "  ", "\n", "a", "Hello world", " Hello world", "Hello  world",
        "Hello   world  ", "   leading spaces", "trailing spaces   ", "trailing space ",
        # contractions (case-sensitive, U+0027 only)
        "don't can't I'm you're we've they'll he'd it's",
        "DON'T I'M YOU'RE WE'VE THEY'LL HE'D IT'S",
        "Don't I'M it'S", "it's 'tis 'twas rock'n'roll", "'s 's 'S 't 're 've 'm 'll 'd",
        "!!'s!!", "''s", "foo's's", "?'s", "l'amour", "it\u2019s", "' s", "'sss 'res 'vee 'lll",
        "'", "''", "x'", "'re'", " 's", "  'll",
        # numbers
        "123", "1234567890123456789012345", "3.14159", "1,000,000", "v1.2.3", " 42 ",
        "abc123def", "12abc", "\u0663\u0664\u0665", "\u216b roman", "\u00bd \u00b2 x\u00b2", "\u2460\u2461",
        # punctuation
        "!!!???...", "---", "\u00abquotes\u00bb", "(parens) [brackets] {braces}", "@#$%^&*()",
        "a...b", "http://example.com/path?x=1&y=2#frag", "C++ && C#", "foo_bar-baz",
        "\"quoted\" 'single'", "$100.00!", " !", " !!", "a !b",
        # whitespace
        "a\tb", "a\t\tb", "a\n\nb", "\n\n\n", "a\r\nb\r\n", "a \n b", "a\x0bb\x0cc",
        "a\u00a0b", "a \u00a0b", "a\u00a0 b", "x\u3000y", "x\u2028y\u2029z", "a\u0085b",
        "a\u200bb zero width", "a\u180eb", "a\ufeffb", "tab\t", " \t \n ", "\u2003em space",
        "   \u00a0\u00a0x", "\u1680ogham", "a\u202fb\u205fc", "\t\tindented", "line\n  indented",
        "a  \n\n  b", "end\n", "end \n", "\r", "\r\n", " \r\n ", "x\x1c\x1d\x1e\x1fy",
        # accents, scripts
        "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "cafe\u0301", "e\u0301\u0300", "\u00c5ngstr\u00f6m",
        "Z\u00fcrich", "\u00df \u1e9e", "\u0130stanbul \u0131i", "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u0430\u043a \u0434\u0435\u043b\u0430?",
        "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
        "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0e44\u0e17\u0e22", "\u00a1Hola, mundo! \u00bfC\u00f3mo est\u00e1s?",
        "Merhaba d\u00fcnya! Nas\u0131ls\u0131n?", "\u13a0 Cherokee",
        # CJK
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5",
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u65e5\u672c \u8a9e", "\uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48",
        "\u3001\u3002\u300c\u300d",
        # emoji
        "\U0001f44d\U0001f3fd", "\U0001f469\u200d\U0001f4bb", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
        "\U0001f3f3\ufe0f\u200d\U0001f308", "\U0001f469\U0001f3fd\u200d\U0001f4bb\u2728\U0001f680 \u2014 coding time!",
        "a\U0001f600b", "\U0001f600 \U0001f600", "\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea",
        # special token
        EOT, "a" + EOT + "b", " " + EOT + " ", "  " + EOT + "  x", EOT + EOT, EOT + "\n",
        "<|endoftext", "<|endoftext|", "<|ENDOFTEXT|>", "text" + EOT, EOT + "Hello",
        "Hello world" + EOT + " Next document", "<<|endoftext|>>", "<|endoftext|>|>",
        # other odd scalars
        "\x00\x01\x7f", "\u00ad soft hyphen", "\u2211\u222b\u221a\u221e \u2260 \u2264", "\u2122 \u00a9 \u00ae",
        "\ue000 private use", "\U000e0001 tag", "a\U00010940b new in Unicode 17", "\U0010ffff",
        # long runs
        "a" * 3000, "1" * 500, " " * 100 + "x", "!" * 300, "ab" * 500, "\n" * 50 + "end",
        "\U0001f600" * 64, "\u00e9" * 200,
    ]


def real_text_cases():
    cases = []
    with open(os.path.join(LICENSES, "GPL-3"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    cases += lines[:250]
    paragraph = []
    for line in lines[250:400]:  # some multi-line paragraphs as single texts
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            cases.append("\n".join(paragraph) + "\n")
            paragraph = []
    with open(os.path.join(FORTUNES, "wisdom"), encoding="utf-8", errors="replace") as f:
        cases += f.read().split("\n%\n")[:120]
    return cases


def decode_cases(vocab):
    """Id sequences (some of them not valid UTF-8) and what HF decodes them to."""
    def byte_ids(bs):
        return [vocab[BYTE_CHAR[b]] for b in bs]
    hello = [vocab["H"], vocab["i"]]
    seqs = [
        [], hello, byte_ids(b"\xc3"), byte_ids(b"\xc3") + hello, byte_ids(b"\xe2\x82"),
        byte_ids(b"\xe2\x82") + hello, byte_ids(b"\xf0\x9f\x98"), byte_ids(b"\xed\xa0\x80"),
        byte_ids(b"\xc0\x80"), byte_ids(b"\xff\xfe"), byte_ids(b"\x80\x80"),
        byte_ids(b"\xf4\x90\x80\x80"), byte_ids(b"\xe0\x80\x80"), byte_ids(b"\xf0\x80\x80\x80"),
        byte_ids(b"\xe2\x82\xac"), byte_ids(b"\xf0\x9f\x98\x80\xf0\x9f"),
        hello + byte_ids(b"\xc3\xa9\xc3") + [vocab[EOT]] + byte_ids(b"\xa9"),
    ]
    rng = random.Random(1234)
    ids = sorted(set(vocab.values()))
    for _ in range(40):
        seqs.append([rng.choice(ids) for _ in range(rng.randint(1, 12))])
    return seqs


def scalar_classes():
    """Classifies every scalar by how HF's ByteLevel pre-tokenizer splits "a" c "1" c c "b"."""
    pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    def split(s):
        return [bytes(CHAR_BYTE[ch] for ch in piece).decode("utf-8")
                for piece, _ in pt.pre_tokenize_str(s)]

    runs = []
    previous = None
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            kind = "O"  # surrogates never occur in a String
        elif cp == 0x20:
            kind = "S"  # the probe below does not work for the space itself
        else:
            c = chr(cp)
            got = split("a" + c + "1" + c + c + "b")
            if got == ["a" + c, "1", c + c + "b"]:
                kind = "L"
            elif got == ["a", c + "1" + c + c, "b"]:
                kind = "N"
            elif got == ["a", c, "1", c + c, "b"]:
                kind = "O"
            elif got == ["a", c, "1", c, c, "b"]:
                kind = "S"
            else:
                raise SystemExit(f"unexpected split for U+{cp:04X}: {got}")
        if kind != previous:
            runs.append([cp, kind])
            previous = kind
    return runs


def main():
    os.makedirs(OUT, exist_ok=True)
    spec = train()
    vocab = write_model_files(spec)

    # Reference tokenizers: transformers from vocab/merges and from the directory,
    # and raw `tokenizers` from each tokenizer.json.
    paths = {n: os.path.join(OUT, n) for n in
             ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_legacy.json", "tokenizer_extra.json"]}
    fast = GPT2TokenizerFast(vocab=paths["vocab.json"], merges=paths["merges.txt"])
    assert len(fast) == VOCAB_SIZE + 1, "transformers built an empty tokenizer"
    from_dir = GPT2TokenizerFast.from_pretrained(OUT)
    raw = Tokenizer.from_file(paths["tokenizer.json"])
    legacy = Tokenizer.from_file(paths["tokenizer_legacy.json"])
    extra = Tokenizer.from_file(paths["tokenizer_extra.json"])

    texts = handwritten_cases() + real_text_cases()
    encode = []
    for text in texts:
        ids = fast.encode(text, add_special_tokens=False)
        assert from_dir.encode(text, add_special_tokens=False) == ids, text
        assert raw.encode(text, add_special_tokens=False).ids == ids, text
        assert legacy.encode(text, add_special_tokens=False).ids == ids, text
        assert fast.decode(ids) == text, (text, fast.decode(ids))
        assert raw.decode(ids, skip_special_tokens=False) == text, text
        encode.append({"text": text, "ids": ids})
    decode = []
    for ids in decode_cases(vocab):
        text = raw.decode(ids, skip_special_tokens=False)
        assert fast.decode(ids) == text
        decode.append({"ids": ids, "text": text})
    dump_json(os.path.join(OUT, "cases.json"), {"encode": encode, "decode": decode})

    extra_texts = handwritten_cases()[:120] + [
        "<|endof", "<|endoftext|>", "<|endof<|endoftext|>", "<|endoftext|><|endof", "<|endoftex",
        "I love New York<|endof and New  York", "New York<|endoftext|>New York", "NewYork",
        "d\u00e9j\u00e0 vu", "hello<|endoftext|>world", "hello<|endof world", " hi", "x New York",
    ]
    extra_encode = []
    for text in extra_texts:
        ids = extra.encode(text, add_special_tokens=False).ids
        extra_encode.append({"text": text, "ids": ids})
    extra_decode = []
    for case in extra_encode:
        extra_decode.append({"ids": case["ids"], "text": extra.decode(case["ids"], skip_special_tokens=False)})
    dump_json(os.path.join(OUT, "cases_extra.json"), {"encode": extra_encode, "decode": extra_decode})

    dump_json(os.path.join(OUT, "scalar_classes.json"), scalar_classes())
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {len(encode)} encode cases, {len(decode)} decode cases, "
          f"{len(extra_encode)} extra cases into {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
