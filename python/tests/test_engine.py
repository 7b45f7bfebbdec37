"""The batched engine: mixed adapter sets in one engine give what each request gives alone."""
import threading

import pytest

import lora
from conftest import fixture


def make_adapters(model):
    targets = ("c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    a = lora.Adapter.create(model, r=4, alpha=8, target_modules=targets, init=lora.LORA_INIT_RANDOM, seed=1)
    b = lora.Adapter.create(model, r=8, alpha=16, target_modules=targets, init=lora.LORA_INIT_RANDOM, seed=2)
    return a, b


def solo(model, prompt, adapters, **kw):
    for ad, scale in adapters:
        model.attach(ad, scale)
    try:
        return model.generate(prompt, **kw)
    finally:
        for ad, _ in adapters:
            model.detach(ad)


def test_mixed_requests_match_solo_generation(tok_model):
    a, b = make_adapters(tok_model)
    sets = [[], [(a, 1.0)], [(b, 1.5)], [(a, 1.0), (b, 0.5)]]
    prompts = ["Hello", "The quick brown fox", "A fool and his money", "Hi", "café naïve", "Hello world again",
               "Predict the future", "x"]
    with lora.Engine(tok_model, max_sequences=4, max_tokens_per_step=8) as engine:
        reqs, wants = [], []
        for k, p in enumerate(prompts):
            kw = dict(max_new_tokens=6, seed=10 + k, stop_at_eos=False, temperature=0 if k % 2 else 0.8, top_k=20)
            reqs.append(engine.submit(p, adapters=sets[k % 4], **kw))
            wants.append(solo(tok_model, p, sets[k % 4], **kw))
        streamed = "".join(reqs[0])  # iterating steps the engine until request 0 ends
        assert streamed == reqs[0].text
        engine.run()
        for k, r in enumerate(reqs):
            assert r.state == "finished" and r.stop_reason == "max_new_tokens"
            assert r.text == wants[k], f"request {k}"
            assert len(r.tokens) == 6


def test_peft_variants_match_solo_generation(tok_model):
    """DoRA, LoRA on wte and lora_bias adapters (random, so each changes the text) mixed with a plain one."""
    plain, _ = make_adapters(tok_model)
    dora = lora.Adapter.create(tok_model, r=4, target_modules=("c_attn", "mlp.c_fc"), use_dora=True,
                               modules_to_save=["ln_f"], init=lora.LORA_INIT_RANDOM, seed=5)
    wte = lora.Adapter.create(tok_model, r=4, target_modules=("wte", "c_attn"), init=lora.LORA_INIT_RANDOM, seed=6)
    bias = lora.Adapter.create(tok_model, r=4, target_modules=("c_attn", "mlp.c_proj"), lora_bias=True,
                               init=lora.LORA_INIT_RANDOM, seed=7)
    sets = [[(dora, 1.0)], [(wte, 0.8)], [(bias, 1.0)], [(plain, 1.0), (dora, 0.5)], [(wte, 1.0), (bias, 0.5)], []]
    prompts = ["Hello", "The quick brown fox", "A fool and his money", "Hi there", "Predict the future", "x"]
    kw = dict(max_new_tokens=6, temperature=0, stop_at_eos=False)
    with lora.Engine(tok_model, max_sequences=6, max_tokens_per_step=12) as engine:
        reqs = [engine.submit(p, adapters=sets[k], **kw) for k, p in enumerate(prompts)]
        engine.run()
        texts = [r.text for r in reqs]
    base = [tok_model.generate(p, **kw) for p in prompts]
    for k, text in enumerate(texts):
        assert text == solo(tok_model, prompts[k], sets[k], **kw), f"request {k}"
    assert sum(t != b for t, b in zip(texts[:5], base[:5])) >= 4  # the adapters change the text


def test_batch_generate_in_input_order(tok_model):
    a, _ = make_adapters(tok_model)
    with lora.Engine(tok_model, max_sequences=2) as engine:
        items = ["Hello", {"prompt": "Hi there", "adapters": [(a, 0.5)], "seed": 3}, [5, 6, 7]]
        texts = engine.generate(items, max_new_tokens=5, temperature=0, stop_at_eos=False)
    assert texts[0] == tok_model.generate("Hello", max_new_tokens=5, temperature=0, stop_at_eos=False)
    assert texts[1] == solo(tok_model, "Hi there", [(a, 0.5)], max_new_tokens=5, temperature=0, stop_at_eos=False,
                            seed=3)
    assert texts[2] == tok_model.detokenize(
        tok_model.generate_tokens([5, 6, 7], max_new_tokens=5, temperature=0, stop_at_eos=False))


def test_cancel_callback_stop_and_errors(tok_model):
    a, _ = make_adapters(tok_model)
    with lora.Engine(tok_model, max_sequences=4) as engine:
        long = engine.submit("Hello", max_new_tokens=40, temperature=0, stop_at_eos=False)
        stopped = engine.submit("Hi", max_new_tokens=10, temperature=0, stop_at_eos=False,
                                on_token=lambda t, p: False)
        other = engine.submit("Hey", max_new_tokens=3, temperature=0, stop_at_eos=False)
        engine.step()
        engine.step()
        long.cancel()
        engine.run()
        assert long.state == "cancelled" and long.stop_reason == "cancelled"
        assert stopped.stop_reason == "callback" and len(stopped.tokens) == 1
        assert other.stop_reason == "max_new_tokens" and len(other.tokens) == 3
        with pytest.raises(lora.WrongStateError):
            long.cancel()
        with pytest.raises(lora.InvalidArgumentError):
            engine.submit("Hello", adapters=[(a, float("nan"))])
        with pytest.raises(lora.InvalidArgumentError):
            engine.submit([])
        with pytest.raises(lora.InvalidArgumentError):
            engine.submit(list(range(64)))  # no room for a new token
        # An exception in on_token ends that request and surfaces from step.
        def boom(t, p):
            raise ValueError("boom")
        bad = engine.submit("Hello", max_new_tokens=4, on_token=boom)
        with pytest.raises(ValueError):
            engine.run()
        engine.run()
        assert bad.stop_reason == "callback"
    assert engine.closed
    with pytest.raises(lora.ClosedError):
        engine.submit("Hello")


def test_bad_adapters_and_truncation(tok_model):
    """An infinite scale, an adapter of another model, a closed adapter: refused, nothing queued;
    max_new_tokens past the context is truncated there (stop reason "context_full")."""
    a, _ = make_adapters(tok_model)
    with lora.Model.load(fixture("gpt2-tok")) as other:
        foreign = lora.Adapter.create(other, r=4, target_modules=("c_attn",), init=lora.LORA_INIT_RANDOM, seed=3)
        with lora.Engine(tok_model, max_sequences=2) as engine:
            with pytest.raises(lora.InvalidArgumentError):
                engine.submit("Hello", adapters=[(a, float("inf"))])
            with pytest.raises(lora.InvalidArgumentError, match="another model"):
                engine.submit("Hello", adapters=[foreign])
            gone = lora.Adapter.create(tok_model, r=4, target_modules=("c_attn",), seed=4)
            gone.close()
            with pytest.raises(lora.ClosedError):
                engine.submit("Hello", adapters=[gone])
            n_ctx = 64
            prompt = list(range(5, 5 + n_ctx - 3))  # room for 3 new tokens
            r = engine.submit(prompt, max_new_tokens=10, temperature=0, stop_at_eos=False)
            engine.run()
            assert r.stop_reason == "context_full" and len(r.tokens) == 3


def test_adapter_closed_while_its_request_waits(tok_model):
    a, _ = make_adapters(tok_model)
    want = solo(tok_model, "Hello", [(a, 1.0)], max_new_tokens=5, temperature=0, stop_at_eos=False)
    with lora.Engine(tok_model, max_sequences=1) as engine:
        first = engine.submit("Hi", max_new_tokens=5, temperature=0)
        r = engine.submit("Hello", adapters=[a], max_new_tokens=5, temperature=0, stop_at_eos=False)
        a.close()  # the request keeps the adapter alive
        engine.run()
        assert first.done and r.text == want


def test_submit_from_threads_while_one_steps(tok_model):
    with lora.Engine(tok_model, max_sequences=4) as engine:
        reqs, lock = [], threading.Lock()
        done = threading.Event()

        def submitter(k):
            for i in range(6):
                r = engine.submit([k * 10 + i + 1, 7], max_new_tokens=4, temperature=0, stop_at_eos=False)
                with lock:
                    reqs.append(r)
                if i % 3 == 0:
                    try:
                        r.cancel()
                    except lora.WrongStateError:
                        pass  # it ended before the cancel arrived

        def stepper():
            while not done.is_set() or not all(r.done for r in list(reqs)):
                engine.step()

        t = threading.Thread(target=stepper)
        t.start()
        subs = [threading.Thread(target=submitter, args=(k,)) for k in range(2)]
        for s in subs:
            s.start()
        for s in subs:
            s.join()
        done.set()
        t.join()
        assert len(reqs) == 12
        for r in reqs:
            assert r.state in ("finished", "cancelled")
            if r.state == "finished":
                assert len(r.tokens) == 4


def write_model_with_extra_vocab(directory, vocab=2000, n_embd=16, n_positions=32, seed=5):
    """A one-layer GPT-2 whose vocabulary (2000) is larger than the fixture
    tokenizer's (1201, copied beside it). The extra ids' embeddings are zero,
    so their logits are 0: greedy decoding never picks them (some real id
    scores above 0), sampling at a high temperature soon does."""
    import array
    import json
    import random
    import shutil

    rng = random.Random(seed)
    e, f = n_embd, 4 * n_embd
    shapes = {"wte.weight": [vocab, e], "wpe.weight": [n_positions, e]}
    for name, shape in [("ln_1.weight", [e]), ("ln_1.bias", [e]), ("attn.c_attn.weight", [e, 3 * e]),
                        ("attn.c_attn.bias", [3 * e]), ("attn.c_proj.weight", [e, e]), ("attn.c_proj.bias", [e]),
                        ("ln_2.weight", [e]), ("ln_2.bias", [e]), ("mlp.c_fc.weight", [e, f]),
                        ("mlp.c_fc.bias", [f]), ("mlp.c_proj.weight", [f, e]), ("mlp.c_proj.bias", [e])]:
        shapes["h.0." + name] = shape
    shapes["ln_f.weight"], shapes["ln_f.bias"] = [e], [e]
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            values = [1.0] * n
        elif name.endswith(".bias"):
            values = [0.0] * n
        else:
            values = [rng.gauss(0.0, 0.5) for _ in range(n)]
        if name == "wte.weight":
            values[1201 * e:] = [0.0] * ((vocab - 1201) * e)
        raw = array.array("f", values).tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    directory.mkdir()
    with open(directory / "model.safetensors", "wb") as out:
        out.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    config = {"model_type": "gpt2", "vocab_size": vocab, "n_positions": n_positions, "n_embd": e, "n_layer": 1,
              "n_head": 2, "bos_token_id": 1200, "eos_token_id": 1200}
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(fixture("gpt2-tok", name), directory / name)


def test_undecodable_token_fails_only_its_request(tmp_path):
    write_model_with_extra_vocab(tmp_path / "m")
    with lora.Model.load(str(tmp_path / "m")) as model:
        want = model.generate("Hello", max_new_tokens=6, temperature=0, stop_at_eos=False)
        with lora.Engine(model, max_sequences=2) as engine:
            hot = engine.submit("Hello", max_new_tokens=20, temperature=100.0, top_k=0, top_p=1.0, seed=3)
            calm = engine.submit("Hello", max_new_tokens=6, temperature=0, stop_at_eos=False)
            # Iterating the other request steps through the failure without raising.
            assert "".join(calm) == want
            assert calm.stop_reason == "max_new_tokens" and not calm.failed
            with pytest.raises(lora.InvalidArgumentError):
                for _ in hot:
                    pass
            assert hot.state == "finished" and hot.stop_reason == "error" and hot.failed
            assert hot.tokens[-1] >= 1201
            # run() steps through a failure (it is the request's own); generate() raises once all ended.
            again = engine.submit("Hello", max_new_tokens=20, temperature=100.0, top_k=0, top_p=1.0, seed=3)
            engine.run()
            assert again.stop_reason == "error" and again.tokens == hot.tokens
            with pytest.raises(lora.InvalidArgumentError, match=r"prompts \[1\] failed"):
                engine.generate([{"prompt": "Hello", "temperature": 0, "max_new_tokens": 3},
                                 {"prompt": "Hello", "temperature": 100.0, "top_k": 0, "seed": 3}],
                                max_new_tokens=20)
