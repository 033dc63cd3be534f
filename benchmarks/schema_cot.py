"""Refinement replies from the local llama.cpp server: a schema with a leading reasoning field, versus
no schema (free reasoning, then JSON), versus the old schema (JSON from the first token, any type).

Prints, per variant: replies that parse, replies whose types are all ours, replies cut at max_tokens,
completion tokens and seconds per reply. The packaged SmolLM2-135M is a plumbing model, so this
measures what the schema does to a weak model's output, not refinement quality.

    .venv/bin/python benchmarks/schema_cot.py [--n 12] [--max-tokens 512] [--variants "old schema" ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refineg import refine  # noqa: E402
from refineg.config import LLMConfig  # noqa: E402
from refineg.data import load_samples  # noqa: E402
from refineg.llm import LLMClient  # noqa: E402
from refineg.llm.embedded import packaged_smollm2  # noqa: E402
from refineg.llm.typesets import load_typeset  # noqa: E402
from refineg.types import Prediction  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared/data/twitter-gmner/Twitter10000_v2.0/txt/dev.txt"
OLD_SCHEMA = refine.RefineAnswer.model_json_schema()


def requests(n: int):
    typeset = load_typeset("twitter")
    samples = [s for s in load_samples(DEV) if s.entities][:n]
    out = []
    for s in samples:
        pred = Prediction(
            s.id,
            tuple(e.with_(decision="delegate", score=0.4, source="tagger") for e in s.entities),
            s.tokens,
            delegated=True,
        )
        out.append(refine.build_request(s, pred, typeset))
    return out


def run(variant: str, reqs, max_tokens: int, cache_dir: Path) -> dict:
    if variant == "no schema":
        reqs = [r.__class__(**{**r.__dict__, "schema": None}) for r in reqs]
    elif variant == "old schema":
        reqs = [r.__class__(**{**r.__dict__, "schema": OLD_SCHEMA}) for r in reqs]
    cfg = LLMConfig(
        gguf=packaged_smollm2(),
        cache=False,
        cache_dir=cache_dir,
        max_tokens={"refinement": max_tokens},
        gguf_ctx=4096,
        concurrency=1,
    )
    types = set(load_typeset("twitter").names)
    t0 = time.perf_counter()
    with LLMClient(cfg, show_progress=False) as client:
        results = client.run(reqs, refine.parse)
        usage = client.summary()["total"]
    seconds = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    return {
        "variant": variant,
        "replies": len(results),
        "parsed": len(ok),
        "types_all_ours": sum(1 for r in ok if all(e.type in types for e in r.value)),
        "truncated": usage["truncated"],
        "completion_tokens_per_reply": usage["completion_tokens"] / max(1, usage["requests"]),
        "seconds_per_reply": seconds / len(results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--variants", nargs="+", default=["schema with reasoning", "no schema", "old schema"])
    args = ap.parse_args()
    reqs = requests(args.n)
    cache = Path("runs/bench/schema-cot")
    print(f"{'variant':<26}{'parsed':>8}{'our types':>11}{'cut':>6}{'tokens/reply':>14}{'s/reply':>9}")
    for variant in args.variants:
        r = run(variant, reqs, args.max_tokens, cache)
        print(
            f"{r['variant']:<26}{r['parsed']:>5}/{r['replies']:<2}{r['types_all_ours']:>9}{r['truncated']:>8}"
            f"{r['completion_tokens_per_reply']:>12.0f}{r['seconds_per_reply']:>11.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
