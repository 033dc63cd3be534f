"""Small gold and prediction files with one kind of error each, the cases the peers' scorers disagree on."""

from refineg.types import Box, Entity, Prediction, Sample

B1, B2, B3, B4 = Box(10, 10, 110, 210), Box(200, 20, 300, 220), Box(320, 20, 420, 220), Box(50, 50, 150, 150)
WRONG = Box(500, 300, 600, 400)
HALF = Box(10, 10, 110, 110)  # IoU with B1 exactly 0.5: counts at >= 0.5, not at > 0.5


def _e(text, etype, start, end, *boxes, source="gold"):
    return Entity(text, etype, start, end, tuple(boxes), source=source)


GOLD = [
    Sample(
        "a",
        ("Bob", "met", "Ann", "in", "Paris"),
        (_e("Bob", "PER", 0, 1, B1), _e("Ann", "PER", 2, 3, B2, B3), _e("Paris", "LOC", 4, 5)),
        image="a.jpg",
    ),
    Sample("b", ("Obama", "Biden", "speak"), (_e("Obama", "PER", 0, 1), _e("Biden", "PER", 1, 2, B4)), image="b.jpg"),
    Sample("c", ("nothing", "named", "here"), (), image="c.jpg"),
    Sample(
        "d",
        ("Red", "Sox", "win", "#", "WorldSeries"),
        (_e("Red Sox", "ORG", 0, 2), _e("WorldSeries", "OTHER", 4, 5)),
        image="d.jpg",
    ),
]


def _preds(change) -> list[Prediction]:
    """Gold as predictions, each entity passed through change (which may return None to drop it, or a list)."""
    out = []
    for s in GOLD:
        ents = []
        for e in s.entities:
            got = change(s.id, e.with_(source="tagger", score=0.9))
            ents += [] if got is None else got if isinstance(got, list) else [got]
        out.append(Prediction(s.id, tuple(ents), s.tokens, s.image))
    return out


CASES = {
    "perfect": _preds(lambda sid, e: e),
    "boxes too often": _preds(lambda sid, e: e if e.boxes else e.with_(boxes=(WRONG,))),
    "wrong boxes": _preds(lambda sid, e: e.with_(boxes=(WRONG,)) if e.boxes else e),
    "one of several boxes": _preds(lambda sid, e: e.with_(boxes=e.boxes[:1])),
    "no boxes at all": _preds(lambda sid, e: e.with_(boxes=())),
    "empty lists": [p if p.id not in ("b", "d") else p.with_(entities=()) for p in _preds(lambda sid, e: e)] + [],
    "spurious in an empty post": [
        p.with_(entities=(_e("named", "ORG", 1, 2, source="tagger"),)) if p.id == "c" else p
        for p in _preds(lambda sid, e: e)
    ],
    "a box at IoU 0.5": _preds(lambda sid, e: e.with_(boxes=(HALF,)) if e.text == "Bob" else e),
    "wrong types": _preds(lambda sid, e: e.with_(type="ORG" if e.type == "PER" else "PER")),
    "missed entities": _preds(lambda sid, e: None if e.text in ("Ann", "Red Sox") else e),
}
