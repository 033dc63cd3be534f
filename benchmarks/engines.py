"""Throughput of `refineg run` when the MLLM is the bottleneck: the local streaming engine against the Ray engine.

The gold-oracle replay server answers every request after a fixed delay (a stand-in for a loaded vLLM replica).
Both engines run as whole `refineg run` processes on the same dev tweets, with a fresh reply cache each; the Ray
engine starts its own local cluster (its start-up is in its wall time). For each run it prints the MLLM calls,
the ideal time (calls x delay / requests allowed in flight), the run's own streaming time (from the summary: from
the first post tagged to the last row written, without reading the input, loading the model and opening the
client) and the process wall time, the
efficiency (ideal / stream time), the most requests the server saw in flight, and whether the rows equal the
local engine's. With --old-src (a checkout of an earlier refineg's src folder), the earlier engine runs too and
its rows are compared byte for byte.

    .venv/bin/python benchmarks/engines.py [--model runs/demo/model] [--n 300] [--delay 0.4 1.0] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
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


def _run(engine: str, args, work: Path, samples, delay: float, concurrency: int, old_src: str | None) -> dict:
    name = f"{engine}-{delay}-{concurrency}"
    with FakeOpenAIServer(default=GoldOracle(samples), latency=delay) as srv:
        out = work / f"{name}.jsonl"
        cmd = [
            REFINEG,
            "run",
            "--model",
            args.model,
            "--data",
            str(work / "data.jsonl"),
            "--images",
            str(work / "images"),
            "--llm-base-url",
            srv.base_url,
            "--llm-model",
            "gold-oracle",
            "--llm-concurrency",
            str(concurrency),
            "--cache-dir",
            str(work / f"cache-{name}"),
            "--out",
            str(out),
            "--quiet",
        ]
        env = dict(os.environ)
        if engine == "ray":
            cmd += ["--engine", "ray", "--config", str(work / "ray.toml")]
        if engine == "earlier":
            env["PYTHONPATH"] = old_src
            cmd = [sys.executable, "-c", "from refineg.cli import main; main()"] + cmd[1:]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        wall = time.perf_counter() - t0
    summary = json.loads((work / f"{name}.jsonl.summary.json").read_text())
    seconds = summary["seconds"]  # an earlier engine's summary has no stream time: its wall time stands in
    stream = seconds.get("stream", seconds.get("total", wall) - seconds.get("load", 0.0))
    calls = summary["llm_calls"]["attempted"]
    return {
        "wall": wall,
        "stream": stream,
        "calls": calls,
        "ideal": calls * delay / concurrency,
        "in_flight": srv.max_in_flight,
        "rows": out.read_text(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--start", type=int, default=300, help="first dev tweet (the demo trains its gate on 0-299)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--delay", type=float, nargs="+", default=[0.4, 1.0], help="seconds the server takes per request")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16])
    ap.add_argument("--engines", nargs="+", default=["local", "ray"])
    ap.add_argument("--llm-actors", type=int, default=2)
    ap.add_argument("--old-src", help="an earlier refineg's src folder: its engine runs too, rows compared")
    args = ap.parse_args()
    samples = load_samples(DEV)[args.start : args.start + args.n]
    work = Path(tempfile.mkdtemp(prefix="refineg-engines-"))
    save_samples(samples, work / "data.jsonl")
    placeholder_images(samples, work / "images")
    (work / "ray.toml").write_text(f"[ray]\nllm_actors = {args.llm_actors}\nbatch_size = 16\n")
    engines = args.engines + (["earlier"] if args.old_src else [])
    print(f"{len(samples)} dev tweets, 2 cores, model {args.model}")
    print(
        f"{'engine':<8}{'delay s':>8}{'in flight cap':>14}{'calls':>7}{'ideal s':>9}{'stream s':>10}"
        f"{'wall s':>8}{'efficiency':>11}{'max in flight':>15}{'same rows':>11}"
    )
    for delay in args.delay:
        for c in args.concurrency:
            rows = {}
            for engine in engines:
                r = _run(engine, args, work, samples, delay, c, args.old_src)
                rows[engine] = r["rows"]
                same = "" if engine == engines[0] else ("yes" if r["rows"] == rows[engines[0]] else "NO")
                print(
                    f"{engine:<8}{delay:>8.2f}{c:>14}{r['calls']:>7}{r['ideal']:>9.1f}{r['stream']:>10.1f}"
                    f"{r['wall']:>8.1f}{r['ideal'] / r['stream']:>11.0%}{r['in_flight']:>15}{same:>11}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
