"""MLLM calls per tweet against GMNER F1, with a gold-box oracle behind the replay server.

The oracle answers every request with the post's gold entities and boxes, so the figures show what
the call budget costs in the best case: every call the pipeline makes is answered perfectly, and a
post that is not sent loses whatever the oracle would have fixed. Placeholder images of each tweet's
size stand in for the real ones (not available here). Prints one row per setting: the two-call path,
the combined call without the groundability gate, and the combined call at several recall targets.

    .venv/bin/python benchmarks/cost.py [--model runs/demo/model] [--start 300] [--n 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refineg.config import GroundConfig, LLMConfig, RunConfig, RunSection  # noqa: E402
from refineg.data import load_samples, read_ids, save_samples  # noqa: E402
from refineg.data.jsonl import read_predictions  # noqa: E402
from refineg.eval.metrics import score  # noqa: E402
from refineg.ground.groundability import Groundability  # noqa: E402
from refineg.runs.local import run_file  # noqa: E402
from refineg.testing.fake_openai import FakeOpenAIServer  # noqa: E402
from refineg.testing.oracle import GoldOracle, placeholder_images  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared/data/twitter-gmner/Twitter10000_v2.0/txt/dev.txt"
SETTINGS = [
    ("two calls, no groundability gate", False, False, 0.97),
    ("combined, no groundability gate", True, False, 0.97),
    ("combined, recall 0.99", True, True, 0.99),
    ("combined, recall 0.97 (default)", True, True, 0.97),
    ("combined, recall 0.95", True, True, 0.95),
    ("combined, recall 0.90", True, True, 0.90),
    ("combined, recall 0.80", True, True, 0.80),
    ("combined, recall 0.70", True, True, 0.70),
    ("combined, recall 0.60", True, True, 0.60),
    ("combined, recall 0.50", True, True, 0.50),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--start", type=int, default=300, help="first dev tweet (the demo model calibrated on dev 1-300)")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    dev = load_samples(DEV)
    samples = dev[args.start : args.start + args.n]
    if Groundability.load(args.model) is None:  # a model trained before groundability existed
        train = load_samples(DEV.with_name("train.txt"), read_ids(DEV.parents[2] / "splits/train-500.ids"))
        Groundability.fit(train, dev[: args.start]).save(args.model)
        print(f"fitted groundability on train-500, calibrated on dev 1-{args.start}, saved into {args.model}")
    work = Path(tempfile.mkdtemp(prefix="refineg-cost-"))
    data = work / "data.jsonl"
    save_samples(samples, data)
    images = work / "images"
    placeholder_images(samples, images)
    oracle = GoldOracle(samples)
    print(f"{len(samples)} dev tweets ({args.start + 1}-{args.start + len(samples)}), model {args.model}")
    print(
        f"{'setting':<36}{'calls/tweet':>12}{'combined':>10}{'refine':>8}{'ground':>8}{'skipped':>9}"
        f"{'GMNER F1':>10}{'MNER F1':>9}"
    )
    with FakeOpenAIServer(default=oracle) as srv:
        for k, (name, combined, skip, recall) in enumerate(SETTINGS):
            cfg = RunConfig(
                llm=LLMConfig(base_url=srv.base_url, model="gold-oracle", cache_dir=work / f"cache{k}", concurrency=16),
                ground=GroundConfig(combined=combined, skip_ungroundable=skip, groundability_recall=recall),
                run=RunSection(images=[images], progress=False),
            )
            out = work / f"pred{k}.jsonl"
            summary = run_file(args.model, data, out, cfg)
            scores = score(samples, read_predictions(out)).overall
            c = summary["calls_per_sample"]
            print(
                f"{name:<36}{c['total']:>12.3f}{c['combined']:>10.3f}{c['refinement']:>8.3f}{c['grounding']:>8.3f}"
                f"{summary['counts'].get('grounding_skipped_groundability', 0):>9}{scores['gmner'].f1:>10.4f}"
                f"{scores['mner'].f1:>9.4f}",
                flush=True,
            )
    g = summary.get("groundability") or {}
    print(f"groundability: dev AUROC {g.get('dev_auroc')}; oracle requests it could not place: {oracle.unknown}")


if __name__ == "__main__":
    main()
