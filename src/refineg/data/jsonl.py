"""Canonical JSONL: one sample (or prediction) per line. See design.md for the fields."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError
from ..types import Box, Entity, Prediction, Sample

_SAMPLE_KEYS = {"id", "tokens", "image", "entities", "width", "height", "text"}
_PRED_KEYS = {"id", "tokens", "image", "entities", "missing_score", "delegated", "maybe_missing"}
_SOURCES = {"gold", "tagger", "mllm", "synthetic"}


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; DataError on broken JSON."""
    if not path.is_file():
        raise DataError("no such file", path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"broken JSON: {exc.msg} (column {exc.colno})", path, lineno) from None
            if not isinstance(obj, dict):
                raise DataError("a line must hold one JSON object", path, lineno)
            if obj.get("id") in (None, ""):
                raise DataError("sample without an id", path, lineno)
            yield lineno, obj


def _box(raw: Any, path: Path, lineno: int, sid: str) -> Box:
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise DataError(f"a box must be [xmin, ymin, xmax, ymax], got {raw!r}", path, lineno, sid)
    try:
        vals = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise DataError(f"non-numeric box {raw!r}", path, lineno, sid) from None
    if not all(math.isfinite(v) for v in vals):
        raise DataError(f"non-finite box {raw!r}", path, lineno, sid)
    box = Box(*vals)
    if box.is_degenerate:
        raise DataError(f"degenerate box {raw!r} (xmin >= xmax or ymin >= ymax)", path, lineno, sid)
    return box


def _entity(raw: Any, tokens: tuple[str, ...] | None, path: Path, lineno: int, sid: str, default_source: str) -> Entity:
    if not isinstance(raw, dict) or "type" not in raw:
        raise DataError(f"an entity needs at least a type: {raw!r}", path, lineno, sid)
    start, end = raw.get("start"), raw.get("end")
    if (start is None) != (end is None):
        raise DataError("an entity needs both start and end, or neither", path, lineno, sid)
    text = raw.get("text")
    if start is not None:
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
            raise DataError(f"bad entity offsets [{start}, {end})", path, lineno, sid)
        if tokens is not None:
            if end > len(tokens):
                raise DataError(f"entity offsets [{start}, {end}) beyond the {len(tokens)} tokens", path, lineno, sid)
            span_text = " ".join(tokens[start:end])
            if text is None:
                text = span_text
            elif "".join(text.split()) != "".join(span_text.split()):
                raise DataError(f"entity text {text!r} does not match tokens {span_text!r}", path, lineno, sid)
    if not isinstance(text, str) or not text.strip():
        raise DataError("an entity needs a text or offsets into tokens", path, lineno, sid)
    score = raw.get("score")
    if score is not None and not (isinstance(score, (int, float)) and 0.0 <= score <= 1.0):
        raise DataError(f"score must be a number in [0, 1], got {score!r}", path, lineno, sid)
    source = raw.get("source", default_source)
    if source not in _SOURCES and default_source == "gold":
        raise DataError(f"unknown source {source!r} (one of {', '.join(sorted(_SOURCES))})", path, lineno, sid)
    boxes = tuple(_box(b, path, lineno, sid) for b in raw.get("boxes") or [])
    return Entity(
        text=text, type=str(raw["type"]), start=start, end=end, boxes=boxes,
        score=None if score is None else float(score), source=source, decision=raw.get("decision"),
    )


def _tokens(obj: dict, path: Path, lineno: int, sid: str) -> tuple[str, ...] | None:
    toks = obj.get("tokens")
    if toks is None:
        return None
    if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
        raise DataError("tokens must be a list of strings", path, lineno, sid)
    return tuple(toks)


def _records(path: Path) -> Iterator[tuple[int, dict, str, tuple[str, ...] | None]]:
    """(line number, object, sample id, tokens) per line; DataError on a repeated id."""
    seen: set[str] = set()
    for lineno, obj in iter_json_lines(path):
        sid = str(obj["id"])
        if sid in seen:
            raise DataError(f"duplicate id {sid}", path, lineno, sid)
        seen.add(sid)
        yield lineno, obj, sid, _tokens(obj, path, lineno, sid)


def read_jsonl(path: str | Path) -> list[Sample]:
    """Samples of a canonical JSONL file; tokens come from ``tokens`` or by tokenising ``text``."""
    from .tokenize import tokenize

    path = Path(path)
    out = []
    for lineno, obj, sid, tokens in _records(path):
        if tokens is None:
            if not isinstance(obj.get("text"), str):
                raise DataError("a sample needs tokens or text", path, lineno, sid)
            tokens = tuple(tokenize(obj["text"]))
        ents = tuple(_entity(e, tokens, path, lineno, sid, "gold") for e in obj.get("entities") or [])
        size = (int(obj["width"]), int(obj["height"])) if obj.get("width") and obj.get("height") else None
        out.append(Sample(
            id=sid, tokens=tokens, entities=ents, image=obj.get("image"), image_size=size,
            raw_text=obj.get("text"), meta={k: v for k, v in obj.items() if k not in _SAMPLE_KEYS},
        ))
    return out


def read_predictions(path: str | Path) -> list[Prediction]:
    """Predictions of a canonical JSONL file (tokens and offsets optional)."""
    path = Path(path)
    out = []
    for lineno, obj, sid, tokens in _records(path):
        ents = tuple(_entity(e, tokens, path, lineno, sid, "tagger") for e in obj.get("entities") or [])
        out.append(Prediction(
            id=sid, entities=ents, tokens=tokens, image=obj.get("image"),
            missing_score=obj.get("missing_score"), delegated=bool(obj.get("delegated", False)),
            maybe_missing=bool(obj.get("maybe_missing", False)),
            meta={k: v for k, v in obj.items() if k not in _PRED_KEYS},
        ))
    return out


def entity_dict(e: Entity) -> dict:
    """The canonical JSON form of an entity."""
    d: dict[str, Any] = {}
    if e.has_span:
        d["start"], d["end"] = e.start, e.end
    d.update(text=e.text, type=e.type, boxes=[b.as_list() for b in e.boxes])
    if e.score is not None:
        d["score"] = round(e.score, 6)
    d["source"] = e.source
    if e.decision is not None:
        d["decision"] = e.decision
    return d


def sample_dict(s: Sample) -> dict:
    """The canonical JSON form of a sample."""
    d: dict[str, Any] = {"id": s.id, "tokens": list(s.tokens), "image": s.image}
    if s.raw_text is not None:
        d["text"] = s.raw_text
    if s.image_size:
        d["width"], d["height"] = s.image_size
    d["entities"] = [entity_dict(e) for e in s.entities]
    d.update(s.meta)
    return d


def prediction_dict(p: Prediction) -> dict:
    """The canonical JSON form of a prediction."""
    d: dict[str, Any] = {"id": p.id}
    if p.tokens is not None:
        d["tokens"] = list(p.tokens)
    if p.image is not None:
        d["image"] = p.image
    d["entities"] = [entity_dict(e) for e in p.entities]
    if p.missing_score is not None:
        d["missing_score"] = round(p.missing_score, 6)
    d["delegated"] = p.delegated
    if p.maybe_missing:
        d["maybe_missing"] = True
    d.update(p.meta)
    return d


def _as_dict(item: Sample | Prediction) -> dict:
    return sample_dict(item) if isinstance(item, Sample) else prediction_dict(item)


def write_jsonl(items: Iterable[Sample | Prediction], path: str | Path) -> None:
    """Write samples or predictions atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(_as_dict(item), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def append_jsonl(item: Sample | Prediction, fh) -> None:
    """Append one line and flush it, so a killed run never leaves a half line behind."""
    fh.write(json.dumps(_as_dict(item), ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())
