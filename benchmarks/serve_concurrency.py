"""Output tokens/s of N concurrent clients vs the same requests sent one at a time (not a test).

    python benchmarks/serve_concurrency.py                      # starts `tunewright serve smollm2-135m-instruct`
    python benchmarks/serve_concurrency.py --url http://127.0.0.1:8000/v1 --model my-run

Requests are greedy (temperature 0), so both passes produce the same tokens and the comparison
is pure scheduling: one request per forward pass, or many rows per forward pass.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from openai import OpenAI

QUESTIONS = [
    "What does os.path.join do?", "Explain Python's list comprehensions.", "What is a dictionary in Python?",
    "How do I read a file line by line?", "What does the `with` statement do?", "Explain `json.dumps`.",
    "What is a generator?", "How do I sort a list of tuples by the second item?", "What is `functools.lru_cache`?",
    "What does `enumerate` return?", "Explain `itertools.chain`.", "What is a virtual environment?",
    "How do I make an HTTP request in Python?", "What is the GIL?", "Explain `collections.Counter`.",
    "What does `zip` do?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile("w+", prefix="tunewright-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "tunewright.cli", "serve", model, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"TUNEWRIGHT_JOBS": "0"})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited; its log: {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("server did not start in 10 minutes")


def ask(client: OpenAI, model: str, question: str, max_tokens: int) -> tuple[str, int, float]:
    start = time.perf_counter()
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                              max_tokens=max_tokens, temperature=0)
    return response.choices[0].message.content, response.usage.completion_tokens, time.perf_counter() - start


def run_pass(client: OpenAI, model: str, questions: list[str], max_tokens: int, workers: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda q: ask(client, model, q, max_tokens), questions))
    wall = time.perf_counter() - start
    tokens = sum(r[1] for r in results)
    latencies = sorted(r[2] for r in results)
    return {"clients": workers, "requests": len(questions), "output_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "latency_p50_s": round(statistics.median(latencies), 2),
            "latency_max_s": round(latencies[-1], 2), "answers": [r[0] for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--url", help="an already running server's /v1 URL (default: start one)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        print(f"starting tunewright serve {args.model} on port {port} ...", file=sys.stderr)
        proc = start_server(args.model, port)
        url = f"http://127.0.0.1:{port}/v1"
    try:
        client = OpenAI(base_url=url, api_key=os.environ.get("TUNEWRIGHT_API_KEY", "none"), timeout=600, max_retries=0)
        questions = (QUESTIONS * (args.clients // len(QUESTIONS) + 1))[: args.clients]
        ask(client, args.model, "warm up", 8)
        sequential = run_pass(client, args.model, questions, args.max_tokens, workers=1)
        concurrent = run_pass(client, args.model, questions, args.max_tokens, workers=args.clients)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    same = sum(a == b for a, b in zip(sequential.pop("answers"), concurrent.pop("answers")))
    report = {"model": args.model, "max_tokens": args.max_tokens, "one_at_a_time": sequential, "concurrent": concurrent,
              "speedup": round(concurrent["tokens_per_s"] / sequential["tokens_per_s"], 2),
              "identical_greedy_answers": f"{same}/{len(questions)}"}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"model {args.model}, {len(questions)} requests, max_tokens {args.max_tokens}")
    for name in ("one_at_a_time", "concurrent"):
        r = report[name]
        print(f"  {name:14s} {r['clients']:3d} client(s): {r['output_tokens']:5d} tokens in {r['wall_s']:7.2f} s = "
              f"{r['tokens_per_s']:7.1f} tokens/s (latency p50 {r['latency_p50_s']} s, max {r['latency_max_s']} s)")
    print(f"  speedup x{report['speedup']}; identical greedy answers {report['identical_greedy_answers']}")


if __name__ == "__main__":
    main()
