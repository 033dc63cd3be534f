"""The most refinement could add at the gate's budget, on Twitter-GMNER dev.

Prints the tagger's dev MNER F1, the delegation rate, and the MNER F1 if the MLLM corrected every
delegated entity and every flagged sample perfectly: kept entities stay as they are, and a
delegated (or flagged) sample gets exactly the gold entities that do not overlap a kept one.

    .venv/bin/python benchmarks/oracle_refine.py [--model MODEL_DIR] [--budget 0.25]

Without --model it trains a tagger on train-500 first (several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from refineg.config import GateConfig, RunConfig
from refineg.data import load_samples, read_ids
from refineg.eval.metrics import score
from refineg.gate import GateCalibration, apply_gate, calibrate
from refineg.tagger.tagger import Tagger
from refineg.training import train_model
from refineg.types import Prediction, Sample

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "twitter-gmner"


def oracle(pred: Prediction, gold: Sample) -> Prediction:
    """The prediction after a perfect correction of its delegated part."""
    if not pred.delegated:
        return pred
    kept = [e for e in pred.entities if e.decision != "delegate"]
    taken = {i for e in kept for i in range(e.start, e.end)}
    fixed = [g for g in gold.entities if not taken.intersection(range(g.start, g.end))]
    return pred.with_(entities=tuple(sorted(kept + fixed, key=lambda e: e.start)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--missing-rate", type=float, default=0.10)
    args = ap.parse_args()
    dev = load_samples(DATA / "Twitter10000_v2.0" / "txt" / "dev.txt")
    model = args.model
    if model is None:
        model = Path("runs/oracle-t500")
        train = load_samples(
            DATA / "Twitter10000_v2.0" / "txt" / "train.txt", read_ids(DATA / "splits" / "train-500.ids")
        )
        train_model(train, dev, RunConfig(), model, progress=False)
    preds = GateCalibration.load(model).rescore(Tagger.load(model).predict_detailed(dev))
    gate = calibrate(preds, dev, GateConfig(budget=args.budget, missing_rate=args.missing_rate))
    gated = apply_gate(preds, gate, llm_configured=True)
    by_id = {g.id: g for g in dev}
    base = score(dev, preds).overall["mner"]
    best = score(dev, [oracle(p, by_id[p.id]) for p in gated]).overall["mner"]
    entity_only = score(
        dev, [oracle(p, by_id[p.id]) if any(e.decision == "delegate" for e in p.entities) else p for p in gated]
    ).overall["mner"]
    n_flagged = sum(1 for p in gated if p.delegated)
    print(f"tagger dev MNER F1:            {base.f1:.4f} (P {base.precision:.4f}, R {base.recall:.4f})")
    print(
        f"delegation rate:               {gate.delegation_rate:.1%} of {gate.n_entities} predicted entities; "
        f"{n_flagged} of {len(dev)} samples ({n_flagged / len(dev):.1%}) go to the MLLM"
    )
    print(f"oracle F1, delegated entities: {entity_only.f1:.4f}")
    print(f"oracle F1, + flagged samples:  {best.f1:.4f} (P {best.precision:.4f}, R {best.recall:.4f})")


if __name__ == "__main__":
    main()
