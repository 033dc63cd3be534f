"""CCKS-GMNER: a text JSON ``{id: {"text": ...}}``, an entity JSON
``{id: [{"name", "label", "bnd": {xmin, ymin, xmax, ymax} | null}]}`` and an image folder.

One entry per box: entries with the same name and label are one entity with several boxes.
Every occurrence of a name at word boundaries is tagged (longest names first, no overlaps);
the writer folds occurrences back into one entry per (name, label, box).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from ..errors import DataError
from ..types import Box, Entity, Sample
from .textio import atomic_open, read_text
from .tokenize import find_mentions, token_span, tokenize_with_offsets

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def _load_json(path: Path) -> dict:
    try:
        obj = json.loads(read_text(path), parse_constant=_no_constant)
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):
            raise DataError(str(exc), path) from None
        raise DataError(f"broken JSON: {exc.msg}", path, exc.lineno) from None
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object keyed by sample id", path)
    return obj


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def find_ccks_files(folder: Path) -> tuple[Path, Path | None, Path | None]:
    """(text JSON, entity JSON or None, image folder or None) inside a CCKS-GMNER folder."""
    text_json = entity_json = None
    for p in sorted(folder.glob("*.json")):
        obj = _load_json(p)
        first = next(iter(obj.values()), None)
        if isinstance(first, dict) and "text" in first and text_json is None:
            text_json = p
        elif isinstance(first, list) and entity_json is None:
            entity_json = p
    if text_json is None:
        raise DataError('no text JSON ({id: {"text": ...}}) in this CCKS folder', folder)
    image_dir = next((d for d in sorted(folder.iterdir()) if d.is_dir() and _has_images(d)), None)
    return text_json, entity_json, image_dir


def _has_images(d: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir())


def _bnd_box(bnd, path: Path, sid: str) -> Box | None:
    if bnd is None:
        return None
    try:
        box = Box(*(float(bnd[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
        if not all(math.isfinite(v) for v in box.as_list()):
            raise ValueError("not finite")
    except (KeyError, TypeError, ValueError):
        raise DataError(f"bad bnd {bnd!r}", path, sample=sid) from None
    if box.is_degenerate:
        raise DataError(f"degenerate box {box.as_list()} (xmin >= xmax or ymin >= ymax)", path, sample=sid)
    return box


def read_ccks(folder: str | Path) -> tuple[list[Sample], Counter]:
    """Samples of a CCKS-GMNER folder, and a counter of what was odd."""
    folder = Path(folder)
    text_json, entity_json, image_dir = find_ccks_files(folder)
    texts = _load_json(text_json)
    ents = _load_json(entity_json) if entity_json else {}
    images = {p.stem: p.name for p in image_dir.iterdir()} if image_dir else {}
    report: Counter = Counter()
    samples = []
    for sid, rec in texts.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError('expected {"text": ...}', text_json, sample=sid)
        entries = ents.get(sid, [])
        if not isinstance(entries, list):
            raise DataError(f"expected a list of entities, got {type(entries).__name__}", entity_json, sample=sid)
        samples.append(_sample(str(sid), rec["text"], entries, entity_json or text_json, report))
        report["samples"] += 1
    samples = [s.with_(image=images.get(s.id, f"{s.id}.jpg")) for s in samples]
    report["entity_ids_without_text"] = len(set(ents) - set(texts))
    return samples, report


def _sample(sid: str, text: str, entries: list, path: Path, report: Counter) -> Sample:
    boxes: dict[tuple[str, str], list[Box]] = {}
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("label"), str):
            raise DataError(f"an entity needs a name and a label (strings): {e!r}", path, sample=sid)
        key = (e["name"], e["label"])
        box = _bnd_box(e.get("bnd"), path, sid)
        boxes.setdefault(key, [])
        if box is not None:
            boxes[key].append(box)
    by_name = {}
    for name, label in boxes:
        if name in by_name and by_name[name] != label:
            report["names_with_two_labels"] += 1
        by_name.setdefault(name, label)
    mentions = find_mentions(text, list(by_name))
    missing = set(by_name) - {name for _, _, name in mentions}
    if missing:
        raise DataError(f"entity name(s) not found at word boundaries in the text: {sorted(missing)}", path, sample=sid)
    cuts = {p for s, e, _ in mentions for p in (s, e)}
    offsets = tokenize_with_offsets(text, cuts)
    entities = []
    for s, e, name in mentions:
        start, end = token_span(offsets, s, e)
        label = by_name[name]
        entities.append(
            Entity(text=name, type=label, start=start, end=end, boxes=tuple(boxes[(name, label)]), source="gold")
        )
    report["entities"] += len(entities)
    return Sample(id=sid, tokens=tuple(t for t, _, _ in offsets), entities=tuple(entities), raw_text=text)


def ccks_entries(sample: Sample) -> list[dict]:
    """The CCKS entity entries of one sample: one per (name, label, box), ``bnd: null`` if none."""
    out, seen = [], set()
    for ent in sample.entities:
        name = surface_text(sample, ent)
        for box in ent.boxes or (None,):
            key = (name, ent.type, box)
            if key in seen:
                continue
            seen.add(key)
            bnd = None if box is None else dict(zip(("xmin", "ymin", "xmax", "ymax"), box.as_list()))
            out.append({"name": name, "label": ent.type, "bnd": bnd})
    return out


def surface_text(sample: Sample, ent: Entity) -> str:
    """The entity as it is written in the raw text (no extra spaces between tokens)."""
    if sample.raw_text is None or not ent.has_span:
        return ent.text
    offsets = _align(sample.raw_text, sample.tokens)
    return sample.raw_text[offsets[ent.start][1] : offsets[ent.end - 1][2]]


def _align(text: str, tokens: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """Character offsets of tokens found left to right in text."""
    out, pos = [], 0
    for tok in tokens:
        i = text.find(tok, pos)
        if i < 0:
            raise DataError(f"token {tok!r} not found in the raw text")
        out.append((tok, i, i + len(tok)))
        pos = i + len(tok)
    return out


def write_ccks(samples: list[Sample], folder: str | Path, overwrite: bool = False) -> None:
    """Write text.json and entity.json (the submission format) into folder; existing ones only with overwrite."""
    folder = Path(folder)
    texts = {s.id: {"text": s.text} for s in samples}
    entities = {s.id: ccks_entries(s) for s in samples}
    targets = {folder / "text.json": texts, folder / "entity.json": entities}
    taken = [p for p in targets if p.exists()]
    if taken and not overwrite:
        raise DataError(f"would overwrite {taken[0]}; give --overwrite to replace it", folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path, obj in targets.items():
        with atomic_open(path) as fh:
            fh.write(json.dumps(obj, ensure_ascii=False, indent=1))
