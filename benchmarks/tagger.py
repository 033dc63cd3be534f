"""Tagger quality, speed and uncertainty on Twitter-GMNER dev, for train-100, train-500 and full train.

For each training set it prints dev MNER P/R/F1, training time, tagging speed, the cost of the
single-pass score over plain Viterbi decoding, and for every confidence score its AUROC for
"this predicted entity is correct" and the share of wrong entities caught at 25% delegation.
With --unlabeled it also self-trains each set on the rest of train as unlabeled posts (tokens only),
and reports that setting separately ("train-500 + unlabeled").

    .venv/bin/python benchmarks/tagger.py [--sets train-100 train-500 full] [--epochs N] [--mc 10] [--unlabeled]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from refineg.config import RunConfig, TaggerConfig
from refineg.data import load_samples, read_ids
from refineg.eval.metrics import matching, score
from refineg.gate import auroc, cross_validated_scores, entity_features, uses_corpus
from refineg.tagger.tagger import Tagger
from refineg.training import train_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "twitter-gmner"
SCORES = ("span_marginal", "mean_max_prob", "min_tag_marginal", "mc_dropout")


def caught_at(scores: np.ndarray, correct: np.ndarray, budget: float = 0.25) -> float:
    """Share of wrong entities among the least confident budget share."""
    k = int(round(budget * len(scores)))
    delegated = np.zeros(len(scores), dtype=bool)
    delegated[np.argsort(scores, kind="mergesort")[:k]] = True
    return float((delegated & ~correct).sum() / max(1, (~correct).sum()))


def timed_decoding(tagger, samples) -> tuple[float, float]:
    """Seconds for plain Viterbi decoding and for decoding with all single-pass scores (the tagger's runtime)."""
    from refineg.tagger.lattice import viterbi

    if tagger.prior is not None:
        tagger.prior.forget()
    order = sorted(samples, key=lambda s: tagger.aligner.n_subtokens(s.tokens))
    bs = tagger.config.eval_batch_size
    t0 = time.perf_counter()
    for k in range(0, len(order), bs):
        enc = tagger.encode([list(s.tokens) for s in order[k : k + bs] if s.tokens])
        em, crf = tagger.emissions(enc)
        viterbi(crf, em, enc.word_mask)
    plain = time.perf_counter() - t0
    if tagger.prior is not None:
        tagger.prior.forget()
    t0 = time.perf_counter()
    tagger.predict_detailed(samples)
    return plain, time.perf_counter() - t0


def evaluate(tagger, dev, mc: int) -> dict:
    """Quality and uncertainty figures on dev."""
    tagged = tagger.predict_detailed(dev, mc_samples=mc)
    preds = [t.prediction for t in tagged]
    by_id = {g.id: g for g in dev}
    correct, table = [], {k: [] for k in SCORES}
    for t in tagged:
        hit = {i for i, _ in matching(t.prediction.entities, by_id[t.prediction.id].entities, "mner")}
        for i, s in enumerate(t.scores):
            correct.append(i in hit)
            for k in SCORES:
                table[k].append(getattr(s, k) if getattr(s, k) is not None else np.nan)
    correct = np.asarray(correct, dtype=bool)
    out = {"mner": score(dev, preds).overall["mner"].as_dict(), "uncertainty": {}}
    for k, vals in table.items():
        v = np.asarray(vals, dtype=float)
        if np.isnan(v).all():
            continue
        out["uncertainty"][k] = {"auroc": auroc(v, correct), "caught_at_25": caught_at(v, correct)}
    types = sorted({e.type for g in dev for e in g.entities})
    combined = cross_validated_scores(entity_features(tagged, types, uses_corpus(tagged)), correct)
    out["uncertainty"]["combined (5-fold CV)"] = {
        "auroc": auroc(combined, correct),
        "caught_at_25": caught_at(combined, correct),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["train-100", "train-500", "full"])
    ap.add_argument("--epochs", type=int, default=None, help="override the configured epochs")
    ap.add_argument("--full-epochs", type=int, default=6, help="epochs for the full train set")
    ap.add_argument("--mc", type=int, default=10, help="MC-dropout passes (0: skip)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--set", action="append", default=[], help="tagger config override, e.g. lstm_hidden=0")
    ap.add_argument(
        "--models", type=Path, default=Path("runs/bench"), help="trained models are saved (and reused) here"
    )
    ap.add_argument("--retrain", action="store_true", help="train even when a saved model exists")
    ap.add_argument(
        "--unlabeled",
        action="store_true",
        help="also the self-trained setting: the set's labels plus "
        "the other train tweets as unlabeled posts (tokens only), reported as '<set> + unlabeled'",
    )
    args = ap.parse_args()
    train_all = load_samples(DATA / "Twitter10000_v2.0" / "txt" / "train.txt")
    dev = load_samples(DATA / "Twitter10000_v2.0" / "txt" / "dev.txt")
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    results = {}
    settings = [(name, False) for name in args.sets]
    settings += [(name, True) for name in args.sets if args.unlabeled and name != "full"]
    for name, self_trained in settings:
        ids = None if name == "full" else set(read_ids(DATA / "splits" / f"{name}.ids"))
        train = [s for s in train_all if s.id in ids] if ids else train_all
        unlabeled = [s.with_(entities=()) for s in train_all if s.id not in ids] if self_trained else []
        epochs = args.full_epochs if name == "full" else args.epochs
        tcfg = TaggerConfig(**({"epochs": epochs} if epochs else {}), **overrides)
        name = f"{name} + unlabeled" if self_trained else name
        model_dir = args.models / name.replace(" + ", "+")
        if args.retrain or not (model_dir / "meta.json").is_file():
            train_model(train, dev, RunConfig(tagger=tcfg), model_dir, progress=False, unlabeled=unlabeled)
        tagger = Tagger.load(model_dir)
        full_meta = json.loads((model_dir / "meta.json").read_text())
        meta = {**full_meta["train"], "seconds": full_meta.get("seconds_total", full_meta["train"]["seconds"])}
        plain, scored = timed_decoding(tagger, dev)
        figures = evaluate(tagger, dev, args.mc)
        figures.update(
            setting=full_meta.get("setting"),
            selftraining=full_meta.get("selftraining"),
            train_seconds=meta["seconds"],
            best_epoch=meta["best_epoch"],
            epochs_run=meta["epochs_run"],
            soup_epochs=meta.get("soup_epochs", []),
            tag_per_s=len(dev) / scored,
            plain_decode_per_s=len(dev) / plain,
            score_cost=scored / plain,
            model_dir=str(model_dir),
        )
        results[name] = figures
        _print(name, figures)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _print(name: str, f: dict) -> None:
    m = f["mner"]
    print(
        f"\n== {name} [{f.get('setting') or 'labelled only'}]: dev MNER P {m['precision']:.4f} R {m['recall']:.4f} "
        f"F1 {m['f1']:.4f} "
        f"(best epoch {f['best_epoch']}/{f['epochs_run']}, weights averaged over epochs {f['soup_epochs']}, "
        f"trained in {f['train_seconds']:.0f} s in all)"
    )
    for r in (f.get("selftraining") or {}).get("rounds", []):
        print(
            f"   self-training round {r['round']}: {r['pseudo']['used']} pseudo-labelled posts, dev F1 "
            f"{r['dev_f1_before']:.4f} -> {r['dev_f1_after']:.4f} "
            f"({'kept' if r['kept'] else 'dropped'}, {r['seconds']:.0f} s)"
        )
    print(
        f"   tagging {f['tag_per_s']:.0f} sent/s with scores, {f['plain_decode_per_s']:.0f} sent/s plain Viterbi "
        f"-> single-pass scores cost {f['score_cost']:.2f}x"
    )
    print(f"   {'score':<22} {'AUROC':>7} {'errors caught @25%':>19}")
    for k, u in f["uncertainty"].items():
        print(f"   {k:<22} {u['auroc']:>7.4f} {u['caught_at_25']:>19.1%}")


if __name__ == "__main__":
    main()
