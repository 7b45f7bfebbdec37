"""`lora serve` against real clients: every endpoint's happy path, SSE framing,
mixed adapters in concurrent requests equal to solo runs, bad requests,
limits, disconnects and the SIGTERM drain."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import time

import pytest
import requests

from conftest import Server, cli, solo, write_model_with_extra_vocab, write_variant_adapter

PROMPTS = ["Hello world", "The quick brown fox", "In the beginning", "Once upon a time there"]


def post(server, body, path="/v1/completions", **kw):
    return requests.post(server.url + path, json=body, timeout=60, **kw)


def complete(server, **body):
    body.setdefault("model", "base")
    body.setdefault("temperature", 0)
    r = post(server, body)
    assert r.status_code == 200, r.text
    return r.json()


def sse(response):
    """The data lines of an event stream, decoded (the last one is the string '[DONE]')."""
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"], e
    if param is not None:
        assert e["param"] == param, e
    return e


def test_health_and_models(server, assets):
    assert requests.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
    models = requests.get(server.url + "/v1/models", timeout=10).json()
    assert models["object"] == "list"
    ids = [m["id"] for m in models["data"]]
    assert ids[0] == "base" and set(ids[1:]) >= {f"a{i}" for i in range(8)}
    for m in models["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"]
        assert m["parent"] == (None if m["id"] == "base" else "base")
    assert models["data"][1]["root"] == assets["adapters"]["a0"]


@pytest.mark.parametrize("model,adapters", [
    ("base", []), ("a0", []), ("a3", []),
    ("base", [{"name": "a1", "scale": 0.7}, {"name": "a2", "scale": -0.5}]),
    ("a4", [{"name": "a5", "scale": 1.5}]),
])
def test_greedy_equals_solo_generate(server, assets, model, adapters):
    prompt = "The quick brown fox"
    r = complete(server, model=model, prompt=prompt, max_tokens=10, echo=True, adapters=adapters)
    uses = ([] if model == "base" else [(assets["adapters"][model], 1)])
    uses += [(assets["adapters"][a["name"]], a["scale"]) for a in adapters]
    assert r["choices"][0]["text"] == solo(assets["model"], prompt, uses, max_tokens=10)
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-") and r["model"] == model
    u = r["usage"]
    assert u["completion_tokens"] >= 1 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert r["choices"][0]["finish_reason"] in ("stop", "length")


def test_concurrent_mixed_adapters_equal_solo(server, assets):
    jobs = []
    for i in range(12):
        model = "base" if i % 3 == 0 else f"a{i % 8}"
        jobs.append((model, PROMPTS[i % len(PROMPTS)]))
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda j: complete(server, model=j[0], prompt=j[1], max_tokens=12, echo=True), jobs))
    for (model, prompt), r in zip(jobs, got):
        uses = [] if model == "base" else [(assets["adapters"][model], 1)]
        assert r["choices"][0]["text"] == solo(assets["model"], prompt, uses, max_tokens=12), (model, prompt)


def test_stream_framing_and_usage(server):
    body = {"model": "a1", "prompt": "Hello world", "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with post(server, body, stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    text_chunks = chunks[:-1]
    assert all(c["usage"] is None for c in text_chunks)
    assert [c["choices"][0]["finish_reason"] for c in text_chunks][:-1] == [None] * (len(text_chunks) - 1)
    assert text_chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c["choices"][0]["text"] for c in text_chunks)
    plain = complete(server, model="a1", prompt="Hello world", max_tokens=12)
    assert streamed == plain["choices"][0]["text"]
    assert usage["usage"] == plain["usage"]


def test_n_seed_and_sampling(server):
    body = dict(model="a2", prompt=["Hello", "In the beginning"], max_tokens=8, temperature=1.0, top_p=0.9, top_k=50,
                seed=1234, n=3)
    a, b = complete(server, **body), complete(server, **body)
    assert [c["index"] for c in a["choices"]] == list(range(6))
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert len({c["text"] for c in a["choices"][:3]}) > 1  # choices of one prompt use seed, seed+1, ...


def test_stop_strings_are_cut(server):
    full = complete(server, model="a0", prompt="Once upon a time there", max_tokens=20, ignore_eos=True)
    text = full["choices"][0]["text"]
    stop = text[3:5] if len(text) >= 5 else text[-1:]
    r = complete(server, model="a0", prompt="Once upon a time there", max_tokens=20, ignore_eos=True, stop=[stop, "zzzz"])
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == text[:text.index(stop)]
    with post(server, dict(model="a0", prompt="Once upon a time there", max_tokens=20, ignore_eos=True, stop=stop,
                           temperature=0, stream=True), stream=True) as s:
        chunks = sse(s)[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text[:text.index(stop)]


def test_logprobs_top_n(server):
    r = complete(server, model="a3", prompt="Hello world", max_tokens=6, logprobs=3, ignore_eos=True)
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert 1 <= len(top) <= 3 and all(v <= 0 for v in top.values())
        assert abs(value - max(top.values())) < 1e-5  # greedy: the chosen token is the most likely one
    assert lp["text_offset"][0] == 0


def test_token_prompts_and_echo(server):
    a = complete(server, prompt="Hello world", max_tokens=5, echo=True)
    ids = [int(x) for x in __import__("subprocess").run(
        [__import__("conftest").cli(), "tokenize", "--model", server_model(server), "Hello world"],
        capture_output=True, text=True, check=True).stdout.split()]
    b = complete(server, prompt=ids, max_tokens=5, echo=True)
    c = complete(server, prompt=[ids, ids], max_tokens=5, echo=True)
    assert a["choices"][0]["text"] == b["choices"][0]["text"] == c["choices"][1]["text"]
    assert a["choices"][0]["text"].startswith("Hello world")


def server_model(server):
    return [m for m in requests.get(server.url + "/v1/models", timeout=10).json()["data"] if m["id"] == "base"][0]["root"]


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert "a5" in [m.id for m in client.models.list().data]
    stream = client.completions.create(model="a5", prompt="Hello world", max_tokens=10, temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    plain = client.completions.create(model="a5", prompt="Hello world", max_tokens=10, temperature=0)
    assert streamed == plain.choices[0].text and plain.usage.completion_tokens >= 1
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="a5", prompt="x", max_tokens=-1)


@pytest.mark.parametrize("body,status,param", [
    ({"model": "base", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": "base", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "base", "prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": "base", "prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"model": "base", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "base", "prompt": "x", "n": 0}, 400, "n"),
    ({"model": "base", "prompt": "x", "logprobs": 99}, 400, "logprobs"),
    ({"model": "base", "prompt": 5}, 400, "prompt"),
    ({"model": "base", "prompt": ""}, 400, "prompt"),
    ({"model": "base", "prompt": [1, 99999]}, 400, "prompt"),
    ({"model": "base", "prompt": "x", "stop": 3}, 400, "stop"),
    ({"model": "base", "prompt": "x", "adapters": [{"name": "a1", "scale": "big"}]}, 400, "adapters[0].scale"),
    ({"model": "base", "prompt": "x", "adapters": [{"name": "zz"}]}, 404, "adapters[0].name"),
    ({"model": "nope", "prompt": "x"}, 404, "model"),
    ({"prompt": "x"}, 400, "model"),
    ({"model": "base"}, 400, "prompt"),
])
def test_bad_requests(server, body, status, param):
    assert_error(post(server, body), status, param)


def test_malformed_bodies(server):
    url = server.url + "/v1/completions"
    headers = {"content-type": "application/json"}
    assert_error(requests.post(url, data=b"{not json", headers=headers, timeout=10), 400)
    assert_error(requests.post(url, data=b"[1, 2]", headers=headers, timeout=10), 400)
    assert_error(requests.post(url, data=b'{"model": "base", "prompt": "x", "temperature": NaN}', headers=headers,
                               timeout=10), 400)
    assert_error(requests.post(url, data=b'{"model": "base", "prompt": "x", "top_p": 1e999}', headers=headers,
                               timeout=10), 400)
    big = json.dumps({"model": "base", "prompt": "x" * (2 << 20)})
    assert_error(requests.post(url, data=big, headers=headers, timeout=30), 413)
    e = assert_error(post(server, {"model": "base", "messages": [{"role": "user", "content": "hi"}]},
                          path="/v1/chat/completions"), 400)
    assert "chat template" in e["message"]
    assert_error(requests.get(server.url + "/v1/nothing", timeout=10), 404)
    assert requests.get(server.url + "/health", timeout=10).status_code == 200  # still alive


def test_metrics(server):
    complete(server, model="a6", prompt="Hello", max_tokens=3)
    m = server.metrics()
    assert m['lora_http_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert m["lora_generated_tokens_total"] >= 3 and m["lora_prompt_tokens_total"] >= 1
    assert m["lora_adapters_loaded"] >= 8 and m["lora_kv_slots_total"] == 8
    assert m["lora_requests_running"] == 0 and m["lora_requests_waiting"] == 0
    assert any(k.startswith("lora_time_to_first_token_seconds_bucket") for k in m)
    assert any(k.startswith("lora_time_per_output_token_seconds_count") for k in m)


def test_load_and_unload_while_serving(server, assets):
    before = complete(server, model="a7", prompt="Hello world", max_tokens=8)["choices"][0]["text"]
    r = post(server, {"lora_name": "again", "lora_path": "a7"}, path="/v1/load_lora_adapter")
    assert r.status_code == 200, r.text
    assert complete(server, model="again", prompt="Hello world", max_tokens=8)["choices"][0]["text"] == before
    assert_error(post(server, {"lora_name": "x", "lora_path": "../../etc"}, path="/v1/load_lora_adapter"), 403, "lora_path")
    assert_error(post(server, {"lora_name": "x", "lora_path": "/etc"}, path="/v1/load_lora_adapter"), 403, "lora_path")
    assert_error(post(server, {"lora_name": "again", "lora_path": "a7"}, path="/v1/load_lora_adapter"), 400, "lora_name")
    assert_error(post(server, {"lora_name": "y", "lora_path": "missing"}, path="/v1/load_lora_adapter"), 404, "lora_path")
    assert post(server, {"lora_name": "again"}, path="/v1/unload_lora_adapter").status_code == 200
    assert_error(post(server, {"model": "again", "prompt": "x"}), 404, "model")
    assert_error(post(server, {"lora_name": "again"}, path="/v1/unload_lora_adapter"), 404, "lora_name")


def test_peft_variants_equal_solo_generate(server, assets):
    """DoRA with a saved ln_f, and LoRA on wte, loaded while serving: concurrent
    requests mixing them with plain adapters and the base give `lora
    generate`'s text (attach + generate)."""
    dirs = {}
    for variant in ("dora", "wte"):
        dirs[variant] = os.path.join(assets["adapter_dir"], f"variant-{variant}")
        write_variant_adapter(dirs[variant], assets["model"], seed=7, variant=variant)
        r = post(server, {"lora_name": f"v-{variant}", "lora_path": f"variant-{variant}"}, path="/v1/load_lora_adapter")
        assert r.status_code == 200, r.text
    jobs = [("v-dora", [], PROMPTS[0]), ("v-wte", [], PROMPTS[1]), ("base", [], PROMPTS[2]),
            ("a1", [{"name": "v-dora", "scale": 0.5}], PROMPTS[3]), ("v-wte", [{"name": "a2", "scale": 1.0}], PROMPTS[0]),
            ("v-dora", [], PROMPTS[2])]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda j: complete(server, model=j[0], adapters=j[1], prompt=j[2], max_tokens=10,
                                               echo=True), jobs))
    for (model, extra, prompt), r in zip(jobs, got):
        path = lambda name: dirs[name[2:]] if name.startswith("v-") else assets["adapters"][name]
        uses = ([] if model == "base" else [(path(model), 1)]) + [(path(a["name"]), a["scale"]) for a in extra]
        assert r["choices"][0]["text"] == solo(assets["model"], prompt, uses, max_tokens=10), (model, extra)
    # Each variant changes the text.
    texts = {j[0]: r["choices"][0]["text"] for j, r in zip(jobs[:3], got[:3])}
    assert complete(server, model="base", prompt=PROMPTS[0], max_tokens=10, echo=True)["choices"][0]["text"] != texts["v-dora"]
    assert complete(server, model="base", prompt=PROMPTS[1], max_tokens=10, echo=True)["choices"][0]["text"] != texts["v-wte"]
    for variant in dirs:
        assert post(server, {"lora_name": f"v-{variant}"}, path="/v1/unload_lora_adapter").status_code == 200


# Servers of their own: the larger embedded model (slow enough that a request is still running when we look).

def long_stream(s, **extra):
    body = {"model": "base", "prompt": "Captain's log,", "max_tokens": 1000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    body.update(extra)
    return requests.post(s.url + "/v1/completions", json=body, stream=True, timeout=120)


def test_queue_full_429_and_disconnect_frees_slot(assets):
    s = Server(["--model", assets["big_model"], "--model-name", "base", "--max-sequences", "1", "--max-queue", "0"])
    try:
        first = long_stream(s)
        lines = first.iter_lines()
        assert next(lines).startswith(b"data: ")  # running
        r = requests.post(s.url + "/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2}, timeout=30)
        e = assert_error(r, 429)
        assert int(r.headers["retry-after"]) >= 1 and e["code"] == "server_busy"
        first.close()  # disconnect mid-stream
        deadline = time.time() + 30
        while time.time() < deadline:
            m = s.metrics()
            if m.get("lora_sequences_cancelled_total", 0) >= 1 and m["lora_requests_running"] == 0:
                break
            time.sleep(0.05)
        assert m["lora_sequences_cancelled_total"] >= 1 and m["lora_requests_running"] == 0
        assert m['lora_requests_rejected_total{reason="queue_full"}'] >= 1
        # The slot is free again.
        ok = requests.post(s.url + "/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2}, timeout=30)
        assert ok.status_code == 200, ok.text
    finally:
        assert s.stop() == 0


def test_more_choices_than_capacity_is_400(assets):
    s = Server(["--model", assets["model"], "--model-name", "base", "--max-sequences", "2", "--max-queue", "1"])
    try:
        r = requests.post(s.url + "/v1/completions", json={"model": "base", "prompt": ["a", "b"], "n": 2}, timeout=10)
        assert "more than the server's 3 sequences" in assert_error(r, 400, "n")["message"]
        r = requests.post(s.url + "/v1/completions", json={"model": "base", "prompt": "a", "n": 3, "max_tokens": 2},
                          timeout=10)
        assert r.status_code == 200 and len(r.json()["choices"]) == 3
    finally:
        assert s.stop() == 0


def test_api_key(assets):
    s = Server(["--model", assets["model"], "--api-key", "sekrit"])
    try:
        body = {"model": "gpt2-tok", "prompt": "Hello", "max_tokens": 2}
        assert_error(requests.post(s.url + "/v1/completions", json=body, timeout=10), 401)
        assert_error(requests.post(s.url + "/v1/completions", json=body, timeout=10,
                                   headers={"authorization": "Bearer wrong"}), 401)
        key = {"authorization": "Bearer sekrit"}
        ok = requests.post(s.url + "/v1/completions", json=body, timeout=10, headers=key)
        assert ok.status_code == 200, ok.text
        assert requests.get(s.url + "/health", timeout=10).status_code == 200
        # Started without --allow-adapter-loading: neither endpoint is there.
        for path, req in (("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "a0"}),
                          ("/v1/unload_lora_adapter", {"lora_name": "x"})):
            e = assert_error(requests.post(s.url + path, json=req, timeout=10, headers=key), 404)
            assert "--allow-adapter-loading" in e["message"]
    finally:
        assert s.stop() == 0


def test_prompt_and_max_tokens_caps(assets):
    s = Server(["--model", assets["model"], "--model-name", "base", "--max-prompt-tokens", "4", "--max-tokens", "3"])
    try:
        url = s.url + "/v1/completions"
        e = assert_error(requests.post(url, json={"model": "base", "prompt": [1, 2, 3, 4, 5]}, timeout=10), 400,
                         "prompt")
        assert "at most 4" in e["message"]
        assert_error(requests.post(url, json={"model": "base", "prompt": [1, 2], "max_tokens": 4}, timeout=10), 400,
                     "max_tokens")
        ok = requests.post(url, json={"model": "base", "prompt": [1, 2, 3, 4], "max_tokens": 3, "ignore_eos": True},
                           timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3, ok.text
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_drains_running_requests(assets, sig):
    s = Server(["--model", assets["big_model"], "--model-name", "base", "--max-sequences", "2", "--drain-timeout", "60"])
    with long_stream(s, max_tokens=100) as r:
        lines = r.iter_lines()
        assert next(lines).startswith(b"data: ")
        s.proc.send_signal(sig)
        rest = [l for l in lines if l]
    assert rest[-1] == b"data: [DONE]"
    last = json.loads(rest[-2][len(b"data: "):])
    assert last["choices"][0]["finish_reason"] == "length"  # finished, not cut
    assert s.proc.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/health", timeout=5)


def test_drain_timeout_cancels(assets):
    # One slot, one queued request: the drain cancels both, the queued one before it ever ran.
    s = Server(["--model", assets["big_model"], "--model-name", "base", "--max-sequences", "1", "--max-queue", "1",
                "--drain-timeout", "0"])
    with long_stream(s) as r, concurrent.futures.ThreadPoolExecutor(1) as pool:
        lines = r.iter_lines()
        assert next(lines).startswith(b"data: ")
        queued = pool.submit(requests.post, s.url + "/v1/completions", timeout=60,
                             json={"model": "base", "prompt": "x", "max_tokens": 50})
        deadline = time.time() + 30
        while s.metrics()["lora_requests_waiting"] < 1:
            assert time.time() < deadline
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        rest = [l for l in lines if l]
        answer = queued.result(timeout=60)
    assert rest[-1] == b"data: [DONE]"
    assert json.loads(rest[-2][len(b"data: "):])["choices"][0]["finish_reason"] == "abort"
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["finish_reason"] == "abort" and answer.json()["usage"]["completion_tokens"] == 0
    assert s.proc.wait(timeout=60) == 0


def test_unload_refused_while_in_use(assets, tmp_path):
    from conftest import write_adapter
    write_adapter(str(tmp_path / "slow-a"), assets["big_model"], seed=5, r=2)
    s = Server(["--model", assets["big_model"], "--model-name", "base", "--max-sequences", "2",
                "--allow-adapter-loading", "--adapter-dir", str(tmp_path)])
    try:
        r = requests.post(s.url + "/v1/load_lora_adapter", json={"lora_name": "slow", "lora_path": "slow-a"}, timeout=30)
        assert r.status_code == 200, r.text
        running = long_stream(s, model="slow")
        lines = running.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines).startswith(b"data: ")
        r = requests.post(s.url + "/v1/unload_lora_adapter", json={"lora_name": "slow"}, timeout=30)
        e = assert_error(r, 409, "lora_name")
        assert e["code"] == "adapter_in_use" and r.headers["retry-after"] == "1"
        running.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            r = requests.post(s.url + "/v1/unload_lora_adapter", json={"lora_name": "slow"}, timeout=30)
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        assert "slow" not in [m["id"] for m in requests.get(s.url + "/v1/models", timeout=10).json()["data"]]
    finally:
        assert s.stop() == 0


def test_slow_reader_does_not_stall_others(assets):
    s = Server(["--model", assets["big_model"], "--model-name", "base", "--max-sequences", "2"])
    try:
        stalled = long_stream(s)  # never read past its first chunk while the others run
        lines = stalled.iter_lines()
        assert next(lines).startswith(b"data: ")
        before = s.metrics()["lora_generated_tokens_total"]
        t0 = time.time()
        for _ in range(3):
            r = requests.post(s.url + "/v1/completions", timeout=60,
                              json={"model": "base", "prompt": "Hello", "max_tokens": 20, "ignore_eos": True})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
        # The stalled stream's sequence kept generating meanwhile (its tokens wait in its buffer).
        m = s.metrics()
        assert m["lora_generated_tokens_total"] - before > 60 and m["lora_requests_running"] == 1
        assert time.time() - t0 < 30
        stalled.close()
    finally:
        assert s.stop() == 0


def test_token_without_text_ends_its_request_with_abort(tmp_path):
    # A model vocabulary larger than its tokenizer's: a sampled id without text
    # ends that request ("abort"); a greedy request beside it is unaffected.
    model = str(tmp_path / "extra-vocab")
    write_model_with_extra_vocab(model)
    want = solo(model, "Hello", max_tokens=4)
    s = Server(["--model", model, "--model-name", "base", "--max-sequences", "2"])
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            hot = pool.submit(requests.post, s.url + "/v1/completions", timeout=60,
                              json={"model": "base", "prompt": "Hello", "max_tokens": 40, "temperature": 2,
                                    "seed": 3})
            calm = pool.submit(requests.post, s.url + "/v1/completions", timeout=60,
                               json={"model": "base", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
            hot, calm = hot.result(timeout=60), calm.result(timeout=60)
    finally:
        assert s.stop() == 0, s.proc.stderr.read()
    assert hot.status_code == 200, hot.text
    assert hot.json()["choices"][0]["finish_reason"] == "abort"
    assert calm.status_code == 200, calm.text
    assert "Hello" + calm.json()["choices"][0]["text"] == want


def test_bf16_kv_cache_equals_solo_generate(server, assets):
    """--kv-cache-dtype bf16: concurrent requests with mixed adapters through
    the engine's bf16 pool give the text `lora generate --kv-cache-dtype bf16`
    gives alone; the log-probabilities move (by the keys' and values'
    rounding) against the F32 cache of the shared server; an unsupported
    cache dtype is a one-line startup error."""
    args = ["--model", assets["model"], "--model-name", "base", "--kv-cache-dtype", "bf16"]
    for i in range(3):
        args += ["--adapter", f"a{i}={assets['adapters'][f'a{i}']}"]
    s = Server(args)
    try:
        jobs = [("base" if i % 4 == 0 else f"a{i % 3}", PROMPTS[i % len(PROMPTS)]) for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda j: complete(s, model=j[0], prompt=j[1], max_tokens=12, echo=True), jobs))
        for (model, prompt), r in zip(jobs, got):
            uses = [] if model == "base" else [(assets["adapters"][model], 1)]
            want = solo(assets["model"], prompt, uses, max_tokens=12, extra=["--kv-cache-dtype", "bf16"])
            assert r["choices"][0]["text"] == want, (model, prompt)
        body = {"model": "a1", "prompt": "Hello world", "max_tokens": 6, "logprobs": 1, "ignore_eos": True}
        lp16 = complete(s, **body)["choices"][0]["logprobs"]["token_logprobs"]
        lp32 = complete(server, **body)["choices"][0]["logprobs"]["token_logprobs"]
        moved = max(abs(a - b) for a, b in zip(lp16, lp32))
        assert 1e-6 < moved < 0.1, (lp16, lp32)
    finally:
        assert s.stop() == 0
    bad = subprocess.run([cli(), "serve", "--model", assets["model"], "--kv-cache-dtype", "q8_0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--kv-cache-dtype" in bad.stderr and bad.stderr.count("\n") <= 2, bad.stderr
