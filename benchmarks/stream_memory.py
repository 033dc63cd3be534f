"""Peak memory of `refineg run` (local engine) as the input grows: the stream keeps at most a window of posts
under way, so the peak should hardly move from 3k to 30k posts.

Each size is the dev tweets repeated under new ids, run as a whole `refineg run` process against the gold-oracle
replay server (a short delay per request, images of the tweets' sizes), with a fresh cache. The peak resident
memory is the child's own (os.wait4), not the benchmark's. With --old-src (an earlier refineg's src folder) the
earlier engine runs on the same inputs too.

    .venv/bin/python benchmarks/stream_memory.py [--model runs/demo/model] [--sizes 3000 30000] [--delay 0.01]
"""

from __future__ import annotations

import argparse
import os
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


def peak_rss_mb(cmd: list[str], env: dict) -> tuple[float, float]:
    """(peak resident MB, wall seconds) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000])
    ap.add_argument("--delay", type=float, default=0.01)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--old-src")
    args = ap.parse_args()
    dev = load_samples(DEV)
    work = Path(tempfile.mkdtemp(prefix="refineg-memory-"))
    placeholder_images(dev, work / "images")
    print(f"model {args.model}; replay server {args.delay * 1000:.0f} ms per request, {args.concurrency} in flight")
    print(f"{'engine':<9}{'posts':>8}{'peak RSS MB':>13}{'wall s':>9}{'MLLM calls':>12}")
    for n in args.sizes:
        posts = [s.with_(id=f"{s.id}-{k}") for k in range(n // len(dev) + 1) for s in dev][:n]
        save_samples(posts, work / f"data-{n}.jsonl")
        for engine in ["streaming"] + (["earlier"] if args.old_src else []):
            with FakeOpenAIServer(default=GoldOracle(dev), latency=args.delay) as srv:
                cmd = [
                    REFINEG,
                    "run",
                    "--model",
                    args.model,
                    "--data",
                    str(work / f"data-{n}.jsonl"),
                    "--images",
                    str(work / "images"),
                    "--llm-base-url",
                    srv.base_url,
                    "--llm-model",
                    "gold-oracle",
                    "--llm-concurrency",
                    str(args.concurrency),
                    "--cache-dir",
                    str(work / f"cache-{engine}-{n}"),
                    "--out",
                    str(work / f"{engine}-{n}.jsonl"),
                    "--quiet",
                ]
                env = dict(os.environ)
                if engine == "earlier":
                    env["PYTHONPATH"] = args.old_src
                    cmd = [sys.executable, "-c", "from refineg.cli import main; main()"] + cmd[1:]
                peak, wall = peak_rss_mb(cmd, env)
                print(f"{engine:<9}{n:>8}{peak:>13.0f}{wall:>9.0f}{len(srv.requests):>12}", flush=True)


if __name__ == "__main__":
    main()
