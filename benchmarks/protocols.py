"""The same predictions under each scoring protocol: how far a number made by one scorer is from another's.

Twitter-GMNER dev is the gold (the test split is not here). Prediction sets: gold itself; the model's tagger
alone (no boxes); the tagger with the gold boxes of the entities it got right (a perfect grounder); the same with
a box on every other entity too (a grounder that boxes too often); the tagger with one box per entity (RiVEG's
grounders give one); gold without the entities that directly follow another entity (what UnCo's gold file
lacks). Prints P / R / F1 per protocol for GMNER, MNER and EEG.

    .venv/bin/python benchmarks/protocols.py [--model runs/demo/model]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refineg.config import RunConfig  # noqa: E402
from refineg.data import load_samples  # noqa: E402
from refineg.eval.protocols import PROTOCOLS  # noqa: E402
from refineg.gate import GatedTagger  # noqa: E402
from refineg.types import Box, Prediction  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared/data/twitter-gmner/Twitter10000_v2.0/txt/dev.txt"
OFF = Box(0, 0, 16, 16)  # a box on no entity: a corner of the image


def _as_predictions(samples) -> list[Prediction]:
    return [Prediction(s.id, tuple(e.with_(source="tagger") for e in s.entities), s.tokens, s.image) for s in samples]


def _grounded(tagged, gold, box_the_rest: bool = False, one_box: bool = False) -> list[Prediction]:
    """Tagged predictions with the gold boxes of the entities they got right in span and type."""
    by_id = {s.id: {(e.start, e.end, e.type): e.boxes for e in s.entities} for s in gold}
    out = []
    for p in tagged:
        ents = []
        for e in p.entities:
            boxes = by_id[p.id].get((e.start, e.end, e.type), ())
            boxes = boxes or ((OFF,) if box_the_rest else ())
            ents.append(e.with_(boxes=boxes[:1] if one_box else boxes))
        out.append(p.with_(entities=tuple(ents)))
    return out


def _adjacent_dropped(gold):
    """Gold without every entity that starts right where another ends (no O between them)."""
    return [
        s.with_(entities=tuple(e for e in s.entities if not any(o.end == e.start for o in s.entities))) for s in gold
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    args = ap.parse_args()
    gold = load_samples(DEV)
    tagged = GatedTagger.load(args.model, RunConfig(), delegate=False)(gold)
    sets = {
        "gold itself": _as_predictions(gold),
        "tagger alone, no boxes": tagged,
        "tagger + perfect grounding": _grounded(tagged, gold),
        "tagger + grounding that boxes every entity": _grounded(tagged, gold, box_the_rest=True),
        "tagger + perfect grounding, one box each": _grounded(tagged, gold, one_box=True),
        "gold without entities right after another": _as_predictions(_adjacent_dropped(gold)),
    }
    n_adjacent = sum(len(s.entities) for s in gold) - sum(len(s.entities) for s in _adjacent_dropped(gold))
    print(
        f"Twitter-GMNER dev: {len(gold)} posts, {sum(len(s.entities) for s in gold)} entities "
        f"({n_adjacent} start right after another entity); model {args.model}"
    )
    print(f"{'predictions':<44}{'task':<7}" + "".join(f"{name:>24}" for name in PROTOCOLS))
    for label, preds in sets.items():
        results = {name: p.scores(gold, preds) for name, p in PROTOCOLS.items()}
        for mode in ("gmner", "mner", "eeg"):
            cells = "".join(
                f"{100 * r[mode].precision:>8.2f}{100 * r[mode].recall:>8.2f}{100 * r[mode].f1:>8.2f}"
                for r in results.values()
            )
            print(f"{label if mode == 'gmner' else '':<44}{mode.upper():<7}{cells}", flush=True)
    print("each protocol: precision, recall, F1 in points")


if __name__ == "__main__":
    main()
