"""Throughput of `refineg run --engine local` against `--engine ray` when the MLLM is the bottleneck.

The gold-oracle replay server answers every request after a fixed delay (a stand-in for a loaded
vLLM replica). Both engines run as whole `refineg run` processes on the same dev tweets, with a fresh
reply cache each, at several caps on requests in flight per endpoint; the Ray engine starts its own
local cluster (its start-up is in its wall time). Prints wall seconds, posts/s, the most requests the
server saw in flight, and whether both engines wrote the same rows.

    .venv/bin/python benchmarks/ray_engine.py [--model runs/demo/model] [--n 600] [--delay 1.0]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refineg.data import load_samples, save_samples  # noqa: E402
from refineg.testing.fake_openai import FakeOpenAIServer  # noqa: E402
from refineg.testing.oracle import GoldOracle, placeholder_images  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared/data/twitter-gmner/Twitter10000_v2.0/txt/dev.txt"
REFINEG = str(Path(sys.executable).parent / "refineg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--start", type=int, default=300)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--delay", type=float, default=1.0, help="seconds the server takes per request")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--llm-actors", type=int, default=2)
    args = ap.parse_args()
    samples = load_samples(DEV)[args.start:args.start + args.n]
    work = Path(tempfile.mkdtemp(prefix="refineg-ray-bench-"))
    save_samples(samples, work / "data.jsonl")
    placeholder_images(samples, work / "images")
    (work / "ray.toml").write_text(f"[ray]\nllm_actors = {args.llm_actors}\nbatch_size = 16\n")
    print(f"{len(samples)} dev tweets, {args.delay:.2f} s per MLLM request, 2 cores, model {args.model}")
    print(f"{'engine':<8}{'in flight cap':>14}{'wall s':>9}{'posts/s':>9}{'calls':>7}{'max in flight':>15}{'same rows':>11}")
    for c in args.concurrency:
        rows = {}
        for engine in ("local", "ray"):
            with FakeOpenAIServer(default=GoldOracle(samples), latency=args.delay) as srv:
                out = work / f"{engine}-{c}.jsonl"
                cmd = [REFINEG, "run", "--engine", engine, "--model", args.model, "--data", str(work / "data.jsonl"),
                       "--images", str(work / "images"), "--llm-base-url", srv.base_url, "--llm-model", "gold-oracle",
                       "--llm-concurrency", str(c), "--cache-dir", str(work / f"cache-{engine}-{c}"), "--out", str(out),
                       "--quiet"] + (["--config", str(work / "ray.toml")] if engine == "ray" else [])
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                wall = time.perf_counter() - t0
                rows[engine] = out.read_text()
                same = "" if engine == "local" else ("yes" if rows["ray"] == rows["local"] else "NO")
                print(f"{engine:<8}{c:>14}{wall:>9.1f}{len(samples) / wall:>9.2f}{len(srv.requests):>7}"
                      f"{srv.max_in_flight:>15}{same:>11}", flush=True)


if __name__ == "__main__":
    main()
