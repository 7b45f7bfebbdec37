#!/usr/bin/env python3
"""Load test of `lora serve` (loopback only, bounded, stops by itself).

Starts the server with a model and 8 random adapters, computes every
distinct request's greedy answer alone (one request at a time), then sends
a fixed number of streaming requests from 32 concurrent clients mixing the
8 adapters and the base. Asserts zero failed requests and that every
streamed answer equals its solo answer; prints requests/s, generated
tokens/s and time to first token p50/p99.

Soak mode (--soak SECONDS; not in CI) repeats the concurrent phase until the
time is up and prints the server's RSS before and after.

    Tests/server/load_test.py --cli .build/release/lora-cli [--model DIR] [--requests 256] [--clients 32]
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: E402  (write_adapter, Server)

PROMPTS = ["Hello world", "The quick brown fox", "In the beginning", "Once upon a time there", "Captain's log,",
           "It was a dark and", "To be or not", "All happy families"]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stream_one(url, model, prompt, max_tokens):
    """(text, tokens, ttft seconds) of one streaming greedy request; raises on any failure."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    text = []
    usage = None
    done = False
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=300) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
        for line in r.iter_lines(decode_unicode=True):
            if not line:
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk["choices"]:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                text.append(c["text"])
    if not done or usage is None:
        raise RuntimeError("stream ended without usage and [DONE]")
    return "".join(text), usage["completion_tokens"], ttft if ttft is not None else time.perf_counter() - t0


def run(args):
    work = tempfile.mkdtemp(prefix="lora-load-")
    adapters = {}
    for i in range(8):
        d = os.path.join(work, f"a{i}")
        conftest.write_adapter(d, args.model, seed=200 + i, r=2 + 2 * (i % 4))
        adapters[f"a{i}"] = d
    if args.cli:
        os.environ["LORA_CLI"] = args.cli
    server_args = ["--model", args.model, "--model-name", "base", "--max-sequences", str(args.max_sequences),
                   "--max-queue", str(args.requests)]
    for name, d in adapters.items():
        server_args += ["--adapter", f"{name}={d}"]
    server = conftest.Server(server_args, threads=args.threads)
    try:
        models = ["base"] + list(adapters)
        jobs = [(models[i % len(models)], PROMPTS[(i // len(models)) % len(PROMPTS)]) for i in range(args.requests)]
        solo = {}
        for job in sorted(set(jobs)):
            solo[job] = stream_one(server.url, job[0], job[1], args.max_tokens)[0]
        rss_before = rss_kib(server.proc.pid)
        rounds = 0
        end = time.time() + args.soak
        failures = 0
        mismatches = 0
        while True:
            rounds += 1
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                futures = [pool.submit(stream_one, server.url, m, p, args.max_tokens) for m, p in jobs]
                results = []
                for f, job in zip(futures, jobs):
                    try:
                        results.append((job, f.result()))
                    except Exception as e:  # counted, reported, fails the run
                        failures += 1
                        print(f"failed: {job}: {e}", file=sys.stderr)
            wall = time.perf_counter() - t0
            for job, (text, _, _) in results:
                if text != solo[job]:
                    mismatches += 1
                    print(f"differs from its solo run: {job}: {text!r} != {solo[job]!r}", file=sys.stderr)
            tokens = sum(r[1] for _, r in results)
            ttfts = sorted(r[2] for _, r in results)
            p99 = ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))] if ttfts else 0
            print(f"round {rounds}: {len(results)} requests from {args.clients} clients in {wall:.2f} s: "
                  f"{len(results) / wall:.1f} requests/s, {tokens / wall:.0f} generated tokens/s, "
                  f"TTFT p50 {statistics.median(ttfts) * 1000:.0f} ms p99 {p99 * 1000:.0f} ms; "
                  f"{failures} failed, {mismatches} differ from solo", flush=True)
            if time.time() >= end:
                break
        rss_after = rss_kib(server.proc.pid)
        if args.soak:
            print(f"server RSS: {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after {rounds} rounds")
    finally:
        code = server.stop()
    if failures or mismatches or code != 0:
        print(f"FAILED: {failures} failed requests, {mismatches} mismatches, server exit {code}", file=sys.stderr)
        return 1
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cli", help="the lora-cli to test (default: $LORA_CLI or the build folder's)")
    p.add_argument("--model", default=conftest.FIXTURE_MODEL)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-sequences", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--soak", type=float, default=0, help="seconds to repeat the concurrent phase (0: once)")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
