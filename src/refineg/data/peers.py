"""The file formats peer systems publish their gold and predictions in, read and written.

- **UnCo / ReFineG / SAKE JSON** (``unco``): a list of ``{"tokens", "image_id", "gt_entities" | "pre_entities"}``;
  an entity row has ``start``, an *inclusive* ``end``, ``entity_type`` (``MISC`` for our ``OTHER``) and
  ``region_box`` (``[x1, y1, x2, y2]``, or ``[]`` for none), one row per box; a prediction row may instead
  give ``region`` (1-based, 0 for none) into its ``mapping_regions``.
- **CCKS 2025 submission JSON** (``ccks-json``): ``{id: [{"name", "label", "bnd": {xmin, ymin, xmax, ymax} |
  null}]}``, one item per box, entities by text (no offsets); the same shape as a CCKS ``entity.json``.
- **RiVEG lines** (``riveg``): ``IMAGE.jpg###text(TYPE)###description###flag###&[box]&[box]``, one line per
  entity, flag 0 for no box (a prediction's image may carry ``Imageid:`` before it and ``#k`` after it).

Rows of one entity (same span and type, or same text and type) are read as one entity with several boxes,
in the order given; written back, each box is a row again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..types import Box, Entity, Prediction, Sample
from .labelstudio import is_export
from .textio import atomic_open, read_text, text_lines

# their type names against ours: MISC is what UnCo's label dictionary calls OTHER
TO_UNCO = {"OTHER": "MISC"}
FROM_UNCO = {"MISC": "OTHER"}
IMAGE_SUFFIX = re.compile(r"\.(?:jpe?g|png|gif|bmp|webp)$", re.I)
# IMAGE###text(TYPE)###description###flag[###&[box]&[box]...]; a text or description may hold "#" itself
_RIVEG_LINE = re.compile(
    r"^(?P<image>[^#\s]+(?:#\d+)?)###(?P<text>.*?)\((?P<type>[^()#]+)\)###(?P<desc>.*)###"
    r"(?P<flag>\d+)(?:###(?P<boxes>&.*))?$"
)


def sample_id(image_id: str) -> str:
    """Our sample id for a peer's image id: the image name without its suffix (``O_3498.jpg`` -> ``O_3498``)."""
    return IMAGE_SUFFIX.sub("", image_id)


# ---- telling them apart -------------------------------------------------------------------------------


def json_kind(path: Path) -> str:
    """``unco`` or ``label-studio`` (a JSON list: posts, or exported tasks), ``ccks-json`` (one JSON object of
    lists by id) or ``jsonl`` (a line per object)."""
    head = read_text(path).lstrip()[:1]
    if head == "[":
        try:
            return "label-studio" if is_export(json.loads(read_text(path))) else "unco"
        except ValueError:
            return "unco"  # broken JSON: the UnCo reader says where
    if head == "{":
        try:
            whole = json.loads(read_text(path))
        except ValueError:
            return "jsonl"  # several objects: a line each
        if isinstance(whole, dict) and "id" not in whole and all(isinstance(v, list) for v in whole.values()):
            return "ccks-json"
    return "jsonl"


def is_riveg(path: Path) -> bool:
    """True for a text file whose first line is a RiVEG ``###`` record."""
    first = next((line for _, line in text_lines(path) if line.strip()), "")
    return "###" in first


# ---- UnCo / ReFineG JSON -----------------------------------------------------------------------------------


def read_unco(path: str | Path) -> tuple[list[Sample], str]:
    """The posts of a UnCo JSON file and which kind it is: ``gold`` (gt_entities) or ``predictions``
    (pre_entities); DataError naming the item and field of anything malformed."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError("expected a JSON list of posts (UnCo / ReFineG format)", path)
    samples, kinds = [], set()
    for k, item in enumerate(data):
        where = f"item {k}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: a post must be a JSON object", path)
        key = "gt_entities" if "gt_entities" in item else "pre_entities" if "pre_entities" in item else None
        if key is None:
            raise DataError(f"{where}: needs gt_entities or pre_entities", path)
        kinds.add(key)
        image_id = item.get("image_id", item.get("img_id"))
        if not isinstance(image_id, str) or not image_id:
            raise DataError(f"{where}: needs an image_id", path)
        tokens = item.get("tokens", [])
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{where}: tokens must be a list of strings", path, sample=image_id)
        rows = item[key]
        if not isinstance(rows, list):
            raise DataError(f"{where}: {key} must be a list", path, sample=image_id)
        source = "gold" if key == "gt_entities" else "tagger"
        entities = _grouped(
            [_unco_row(r, tokens, path, f"{where}.{key}[{n}]", image_id) for n, r in enumerate(rows)], source
        )
        samples.append(Sample(sample_id(image_id), tuple(tokens), tuple(entities), image=image_id))
    if len(kinds) > 1:
        raise DataError("mixes gt_entities and pre_entities: a file is gold or predictions", path)
    _unique_ids(samples, path)
    return samples, "predictions" if kinds == {"pre_entities"} else "gold"


def _unco_row(row: Any, tokens: list[str], path: Path, where: str, sid: str) -> tuple:
    """(start, end exclusive, type, text, box or None) of one UnCo row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: an entity row must be a JSON object", path, sample=sid)
    start, end, etype = row.get("start"), row.get("end"), row.get("entity_type")
    if not (_int(start) and _int(end) and 0 <= start <= end):
        raise DataError(
            f"{where}: start and end must be whole numbers, start <= end (got {start!r}, {end!r})", path, sample=sid
        )
    if tokens and end >= len(tokens):
        raise DataError(f"{where}: end {end} is past the post's {len(tokens)} tokens", path, sample=sid)
    if not isinstance(etype, str) or not etype:
        raise DataError(f"{where}: entity_type must be a name", path, sample=sid)
    raw = row.get("region_box")
    if raw is None and "mapping_regions" in row:  # UnCo's other way: an index into its candidate regions
        region, candidates = row.get("region"), row.get("mapping_regions")
        raw = (
            []
            if region == 0
            else candidates[region - 1]
            if _int(region) and isinstance(candidates, list) and 0 < region <= len(candidates)
            else None
        )
    box = _box(raw if raw is not None else [], path, where, sid)
    text = row.get("phrase") if isinstance(row.get("phrase"), str) else " ".join(tokens[start : end + 1])
    return start, end + 1, FROM_UNCO.get(etype, etype), text, box


def write_unco(items: Sequence[Sample | Prediction], path: str | Path, predictions: bool) -> None:
    """Samples (gt_entities) or predictions (pre_entities) as a UnCo JSON list; every entity needs offsets."""
    key = "pre_entities" if predictions else "gt_entities"
    out = []
    for item in items:
        rows = []
        for e in item.entities:
            if not e.has_span:
                raise DataError("the UnCo format needs each entity's start and end", path, sample=item.id)
            base = {"start": e.start, "end": e.end - 1, "entity_type": TO_UNCO.get(e.type, e.type), "phrase": e.text}
            rows += [{**base, "region_box": _numbers(b)} for b in e.boxes] or [{**base, "region_box": []}]
        out.append({"tokens": list(item.tokens or ()), "image_id": item.image or f"{item.id}.jpg", key: rows})
    with atomic_open(path) as fh:
        json.dump(out, fh, ensure_ascii=False, indent=1)


# ---- CCKS 2025 submission JSON --------------------------------------------------------------------------


def read_ccks_json(path: str | Path, source: str = "tagger") -> list[Prediction]:
    """Predictions of a CCKS submission JSON: entities by text and label, their boxes (no offsets)."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError("expected a JSON object of entity lists by sample id (CCKS submission)", path)
    preds = []
    for sid, items in data.items():
        if not isinstance(items, list):
            raise DataError(f"sample {sid}: expected a list of entities", path, sample=sid)
        rows = []
        for n, it in enumerate(items):
            where = f"sample {sid}, entity {n}"
            if not isinstance(it, dict) or not isinstance(it.get("name"), str) or not isinstance(it.get("label"), str):
                raise DataError(f"{where}: needs a name and a label", path, sample=sid)
            bnd = it.get("bnd")
            if bnd is not None and not isinstance(bnd, dict):
                raise DataError(f"{where}: bnd must be an object or null", path, sample=sid)
            raw = [bnd.get(k) for k in ("xmin", "ymin", "xmax", "ymax")] if bnd else []
            rows.append((None, None, it["label"], it["name"], _box(raw, path, where, sid)))
        preds.append(Prediction(str(sid), tuple(_grouped(rows, source))))
    return preds


def write_ccks_json(items: Iterable[Sample | Prediction], path: str | Path) -> None:
    """Entities as a CCKS submission JSON: one item per box (``bnd`` null for an entity with none)."""
    out = {}
    for item in items:
        out[item.id] = [
            {"name": e.text, "label": e.type, "bnd": dict(zip(("xmin", "ymin", "xmax", "ymax"), _numbers(b)))}
            for e in item.entities
            for b in e.boxes
        ] + [{"name": e.text, "label": e.type, "bnd": None} for e in item.entities if not e.boxes]
    with atomic_open(path) as fh:
        json.dump(out, fh, ensure_ascii=False, indent=1)


# ---- RiVEG lines ---------------------------------------------------------------------------------------------


def read_riveg(path: str | Path, source: str = "gold") -> list[Sample]:
    """Posts of a RiVEG file (a label file or predictions), entities by text and type, no tokens."""
    path = Path(path)
    order, by_image = [], {}
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        m = _RIVEG_LINE.match(line.strip())
        if not m:
            raise DataError("a RiVEG line is IMAGE###text(TYPE)###description###flag[###&[box]...]", path, lineno)
        image = m["image"].removeprefix("Imageid:").split("#")[0]
        boxes = (
            [
                _box(_riveg_numbers(b, path, lineno), path, f"line {lineno}", image)
                for b in (m["boxes"] or "").split("&")[1:]
            ]
            if int(m["flag"])
            else []
        )
        if image not in by_image:
            order.append(image)
            by_image[image] = []
        # a line is an entity (their scorer counts lines): lines of one text and type are not merged
        by_image[image].append(Entity(m["text"], m["type"], boxes=tuple(boxes), source=source))
    return [Sample(sample_id(img), (), tuple(by_image[img]), image=img) for img in order]


def write_riveg(items: Iterable[Sample | Prediction], path: str | Path) -> None:
    """Entities as RiVEG lines: flag 2 and every box after ``&`` for an entity with boxes, flag 0 without."""
    lines = []
    for item in items:
        image = item.image or f"{item.id}.jpg"
        for e in item.entities:
            boxes = "".join(f"&{_numbers(b)}" for b in e.boxes) or "&[0, 0, 0, 0]"
            lines.append(f"{image}###{e.text}({e.type})###{e.text}###{2 if e.boxes else 0}###{boxes}")
    with atomic_open(path) as fh:
        fh.write("".join(line + "\n" for line in lines))


def _riveg_numbers(text: str, path: Path, lineno: int) -> list[float]:
    try:
        return [float(v) for v in text.strip().strip("[]").split(",")]
    except ValueError:
        raise DataError(f"a box must be four numbers, got {text!r}", path, lineno) from None


# ---- shared --------------------------------------------------------------------------------------------------


def _grouped(rows: list[tuple], source: str) -> list[Entity]:
    """Rows (start, end, type, text, box or None) as entities: the boxed rows of one span (or text) and type are
    one entity, its boxes in row order; a row of the same span and type without a box stays an entity of its
    own (a file that says both is read as saying both)."""
    order, boxes, texts = [], {}, {}
    for start, end, etype, text, box in rows:
        key = ((start, end) if start is not None else (" ".join(text.split()),), etype, box is not None)
        if key not in boxes:
            order.append(key)
            boxes[key], texts[key] = [], text
        if box is not None:
            boxes[key].append(box)
    return [
        Entity(texts[k], k[1], *(k[0] if len(k[0]) == 2 else (None, None)), boxes=tuple(boxes[k]), source=source)
        for k in order
    ]


def _box(raw: Any, path: Path, where: str, sid: str) -> Box | None:
    """A box of four finite numbers, None for an empty list (no box); DataError otherwise."""
    if isinstance(raw, list) and not raw:
        return None
    if not (
        isinstance(raw, list)
        and len(raw) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw)
    ):
        raise DataError(f"{where}: a box must be four finite numbers or [], got {raw!r}", path, sample=sid)
    return Box(*(float(v) for v in raw))


def _numbers(box: Box) -> list:
    return box.as_list()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"broken JSON: {exc.msg} (column {exc.colno})", path, exc.lineno) from None


def _unique_ids(samples: list[Sample], path: Path) -> None:
    seen = set()
    for s in samples:
        if s.id in seen:
            raise DataError(f"image_id {s.image} appears twice", path, sample=s.id)
        seen.add(s.id)
