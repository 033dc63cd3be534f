"""Does augmentation help the tagger? Dev MNER F1 for train-500 alone, train-500 plus offline
mention replacement, and (when an LLM is configured) train-500 plus LLM synthesis.

    .venv/bin/python benchmarks/synthesis.py [--per-sample 3] [--seeds 13 14]
    REFINEG_LLM_BASE_URL=... REFINEG_LLM_MODEL=... .venv/bin/python benchmarks/synthesis.py

Several seeds are averaged because a few tenths of F1 are within seed noise at 500 sentences.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from refineg.config import RunConfig, SynthConfig, TaggerConfig, load_config
from refineg.data import load_samples, read_ids
from refineg.synth import synthesize
from refineg.tagger.train import train_tagger

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "twitter-gmner"


def dev_f1(train, dev, seed: int) -> tuple[float, float]:
    """Best dev MNER F1 and training seconds for one seed."""
    _, report = train_tagger(train, dev, TaggerConfig(seed=seed), progress=False)
    return report.best_dev_f1, report.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-sample", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[13])
    ap.add_argument("--skip-baseline", action="store_true", help="do not retrain train-500 alone")
    args = ap.parse_args()
    txt = DATA / "Twitter10000_v2.0" / "txt"
    seeds = load_samples(txt / "train.txt", read_ids(DATA / "splits" / "train-500.ids"))
    dev = load_samples(txt / "dev.txt")
    cfg = load_config(None)
    settings = {} if args.skip_baseline else {"train-500": seeds}
    mr = synthesize(seeds, RunConfig(synth=SynthConfig(per_sample=args.per_sample)), "mention-replacement", exclude=dev)
    settings[f"train-500 + mention replacement x{args.per_sample} ({mr.summary['kept']} sentences)"] = (
        seeds + mr.samples
    )
    if cfg.llm.configured:
        llm = synthesize(seeds, cfg, "llm", exclude=dev)
        settings[f"train-500 + LLM synthesis ({llm.summary['kept']} sentences)"] = seeds + llm.samples
        print(f"LLM synthesis: {llm.summary}")
    else:
        print("no LLM configured (REFINEG_LLM_BASE_URL/MODEL or REFINEG_LLM_GGUF): LLM synthesis skipped")
    for name, train in settings.items():
        runs = [dev_f1(train, dev, s) for s in args.seeds]
        f1s = [f for f, _ in runs]
        spread = f" ± {statistics.stdev(f1s):.4f}" if len(f1s) > 1 else ""
        print(
            f"{name:<60} dev MNER F1 {statistics.mean(f1s):.4f}{spread}  "
            f"({', '.join(f'{f:.4f}' for f in f1s)}; {statistics.mean(s for _, s in runs):.0f} s to train)"
        )


if __name__ == "__main__":
    main()
