"""Self-training settings compared on dev, with dev split in two so that choosing does not flatter.

The teacher is the demo's model (train-500, epochs and gate picked on dev 1-300). Each setting
self-trains it on the other 6,500 train tweets (tokens only), with dev 1-300 deciding epochs and
whether the round is kept, and is scored on dev 301-1500, which no choice saw.

    .venv/bin/python benchmarks/selftrain.py [--model runs/demo/model] [--seeds 0,1] \\
        '{"entity_score": 0.7}' '{"weight": 1.0}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refineg.config import RunConfig, SelfTrainConfig  # noqa: E402
from refineg.data import load_samples, read_ids  # noqa: E402
from refineg.eval.metrics import score  # noqa: E402
from refineg.selftrain import self_train  # noqa: E402
from refineg.tagger.tagger import Tagger  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/twitter-gmner"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="runs/demo/model", help="a train-500 model whose epochs were picked on dev 1-300"
    )
    ap.add_argument("--seeds", default="0", help="comma-separated offsets added to the student seeds: one run each")
    ap.add_argument("settings", nargs="*", default=["{}"], help="[selftrain] overrides as JSON, one per setting")
    args = ap.parse_args()
    train_all = load_samples(DATA / "Twitter10000_v2.0/txt/train.txt")
    dev = load_samples(DATA / "Twitter10000_v2.0/txt/dev.txt")
    ids = set(read_ids(DATA / "splits/train-500.ids"))
    train = [s for s in train_all if s.id in ids]
    unlabeled = [s.with_(entities=()) for s in train_all if s.id not in ids]
    choose, held = dev[:300], dev[300:]
    teacher = Tagger.load(args.model)
    f1 = score(choose, teacher.predict(choose)).overall["mner"].f1
    print(
        f"500 labelled only: dev 1-300 F1 {f1:.4f}, "
        f"dev 301-1500 F1 {score(held, teacher.predict(held)).overall['mner'].f1:.4f}"
    )
    for raw, offset in ((raw, int(o)) for raw in args.settings for o in args.seeds.split(",")):
        tagger_cfg = teacher.config.model_copy(update={"seed": teacher.config.seed + offset})
        cfg = RunConfig(tagger=tagger_cfg, selftrain=SelfTrainConfig(**json.loads(raw)))
        done = self_train(teacher, f1, train, choose, unlabeled, cfg, progress=False)
        rounds = "; ".join(
            f"round {r['round']}: {r['pseudo']['used']} posts ({r['pseudo']['partly_trusted']} "
            f"partly trusted, {r['pseudo']['unknown_words']} unknown words), {r['dev_f1_before']:.4f} -> "
            f"{r['dev_f1_after']:.4f} {'kept' if r['kept'] else 'dropped'} ({r['seconds']:.0f} s)"
            for r in done.rounds
        )
        held_f1 = score(held, done.tagger.predict(held)).overall["mner"].f1
        print(
            f"500 labelled + {len(unlabeled)} unlabeled, {raw}, seed +{offset}: {rounds}; "
            f"dev 301-1500 F1 {held_f1:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
