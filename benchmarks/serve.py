"""Throughput and latency of `refineg serve` at concurrency 1, 8 and 32: without an LLM, and with the replay
server answering every MLLM request after a fixed delay (an MLLM-bound service).

The service runs as its own process (`refineg serve`), the load comes from threads here, over loopback HTTP.
Each request is a dev tweet with the sample image attached.

    .venv/bin/python benchmarks/serve.py [--model runs/demo/model] [--delay 0.2] [--requests 150]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refineg.data import load_samples  # noqa: E402
from refineg.llm.embedded import free_port  # noqa: E402
from refineg.testing.fake_openai import FakeOpenAIServer  # noqa: E402
from refineg.testing.oracle import GoldOracle  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared/data/twitter-gmner"
REFINEG = str(Path(sys.executable).parent / "refineg")


def start(model: str, *llm: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, REFINEG_CACHE_DIR=tempfile.mkdtemp(prefix="refineg-serve-bench-"))
    proc = subprocess.Popen(
        [REFINEG, "serve", "--model", model, "--port", str(port), "--llm-concurrency", "64", *llm],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the service did not start: {proc.stderr.read().decode()[-2000:]}")


def load_test(url: str, bodies: list[dict], concurrency: int) -> dict:
    def one(body):
        t0 = time.perf_counter()
        r = client.post(f"{url}/v1/gmner", json=body, timeout=120)
        r.raise_for_status()
        return time.perf_counter() - t0

    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = sorted(pool.map(one, bodies))
        wall = time.perf_counter() - t0
    return {
        "rps": len(bodies) / wall,
        "p50": statistics.median(latencies) * 1000,
        "p95": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--delay", type=float, default=0.2, help="seconds the replay server takes per MLLM request")
    ap.add_argument("--requests", type=int, default=150)
    args = ap.parse_args()
    dev = load_samples(SHARED / "Twitter10000_v2.0/txt/dev.txt")[: args.requests]
    image = "data:image/jpeg;base64," + base64.b64encode((SHARED / "sample_images/O_3498.jpg").read_bytes()).decode()
    bodies = [{"id": s.id, "tokens": list(s.tokens), "image": image} for s in dev]
    print(f"{len(bodies)} requests per run (dev tweets, each with a {len(image) // 1024} kB image)")
    print(f"{'setting':<34}{'concurrency':>12}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}")
    with FakeOpenAIServer(default=GoldOracle(dev), latency=args.delay) as llm:
        for name, extra in (
            ("no LLM", ()),
            (
                f"replay MLLM, {args.delay * 1000:.0f} ms a call",
                ("--llm-base-url", llm.base_url, "--llm-model", "oracle"),
            ),
        ):
            proc, url = start(args.model, *extra)
            try:
                load_test(url, bodies[:8], 4)  # warm-up
                for c in (1, 8, 32):
                    r = load_test(url, bodies, c)
                    print(f"{name:<34}{c:>12}{r['rps']:>8.1f}{r['p50']:>9.0f}{r['p95']:>9.0f}", flush=True)
                health = httpx.get(f"{url}/healthz").json()
                print(f"  mean tagger batch {health['mean_batch_size']}; requests {json.dumps(health['requests'])}")
            finally:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
