"""Throughput of the MLLM client against the local replay server with a fixed latency.

Prints requests/s at several concurrency levels (ideal: concurrency / latency), the client's own
overhead per request, and the speed of a fully cached re-run.

    .venv/bin/python benchmarks/llm_concurrency.py [--latency 0.2] [--levels 1 4 16 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from refineg.config import LLMConfig
from refineg.llm import LLMClient, LLMRequest
from refineg.testing.fake_openai import FakeOpenAIServer, Reply


def _requests(n: int, tag: str) -> list[LLMRequest]:
    return [
        LLMRequest("bench", "bench", tag, [{"role": "user", "content": f"item {i}"}], None, str(i)) for i in range(n)
    ]


def _timed_run(cfg: LLMConfig, reqs: list[LLMRequest]) -> float:
    with LLMClient(cfg, show_progress=False) as client:
        t0 = time.perf_counter()
        results = client.run(reqs, lambda text: text)
        elapsed = time.perf_counter() - t0
    assert all(r.ok for r in results)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    args = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="refineg-bench-"))
    print(f"replay server latency: {args.latency * 1000:.0f} ms per request")
    print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>8} {'ideal':>8} {'efficiency':>10}")
    with FakeOpenAIServer(default=lambda body: Reply("ok"), latency=args.latency) as srv:
        for level in args.levels:
            n = max(40, 10 * level)
            cfg = LLMConfig(base_url=srv.base_url, model="replay", concurrency=level, cache=False)
            secs = _timed_run(cfg, _requests(n, f"c{level}"))
            ideal = level / args.latency
            print(f"{level:>11} {n:>8} {secs:>8.2f} {n / secs:>8.1f} {ideal:>8.1f} {n / secs / ideal:>10.0%}")
    with FakeOpenAIServer(default=lambda body: Reply("ok"), latency=0.0) as srv:
        n = 300
        cfg = LLMConfig(base_url=srv.base_url, model="replay", concurrency=1, cache=False)
        secs = _timed_run(cfg, _requests(n, "zero"))
        print(
            f"round trip at zero server latency, concurrency 1: {secs / n * 1000:.2f} ms per request "
            "(client + loopback HTTP + our Python server)"
        )
        cfg = LLMConfig(base_url=srv.base_url, model="replay", concurrency=1, cache_dir=cache)
        _timed_run(cfg, _requests(n, "cached"))
        secs = _timed_run(cfg, _requests(n, "cached"))
        print(f"cached re-run: {secs / n * 1000:.2f} ms per request, {len(srv.requests) - 2 * n} extra HTTP requests")


if __name__ == "__main__":
    main()
