"""Canonical JSONL: one sample (or prediction) per line. See design.md for the fields."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import DataError
from ..types import Box, Entity, Prediction, Sample
from .textio import atomic_open, text_lines

_SAMPLE_KEYS = {"id", "tokens", "image", "entities", "width", "height", "text"}
_PRED_KEYS = {"id", "tokens", "image", "entities", "missing_score", "delegated", "maybe_missing"}
_SOURCES = {"gold", "tagger", "mllm", "synthetic"}

Finite = Annotated[float, Field(allow_inf_nan=False)]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _EntityRecord(BaseModel):
    """One entity as a JSONL line holds it: types, ranges and finite numbers checked here, at the boundary."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str = Field(min_length=1)
    text: str | None = None
    start: int | None = Field(None, ge=0)
    end: int | None = Field(None, ge=1)
    boxes: list[Annotated[list[Finite], Field(min_length=4, max_length=4)]] | None = None
    score: Unit | None = None
    source: str | None = None
    decision: Literal["keep", "delegate"] | None = None


class _Record(BaseModel):
    """One sample or prediction line."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str | int
    tokens: list[str] | None = None
    text: str | None = None
    image: str | None = None
    entities: list[_EntityRecord] | None = None
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)
    missing_score: Unit | None = None
    delegated: bool = False
    maybe_missing: bool = False


class _PostRecord(BaseModel):
    """One unlabeled post: tokens or text; its id and image are optional and anything else on the line (entities
    too) unread."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str | int | None = None
    tokens: list[str] | None = None
    text: str | None = None
    image: str | None = None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(line)"
    got = first.get("input")
    shown = json.dumps(got)[:80] if isinstance(got, (str, int, float, list, dict, type(None))) else repr(got)[:80]
    return f"{loc}: {first['msg'].lower()} (got {shown})"


def iter_json_lines(path: Path, need_id: bool = True, objects: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line; DataError on broken JSON, and (when asked) on a line
    that is not an object or has no id."""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise DataError(f"broken JSON: {exc.msg} (column {exc.colno})", path, lineno) from None
        except ValueError as exc:
            raise DataError(str(exc), path, lineno) from None
        if objects and not isinstance(obj, dict):
            raise DataError("a line must hold one JSON object", path, lineno)
        if need_id and obj.get("id") in (None, ""):
            raise DataError("sample without an id", path, lineno)
        yield lineno, obj


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _validated(obj: dict, path: Path, lineno: int) -> _Record:
    try:
        return _Record.model_validate(obj)
    except ValidationError as exc:
        raise DataError(_describe(exc), path, lineno, str(obj.get("id"))) from None


def _box(raw: tuple, path: Path, lineno: int, sid: str) -> Box:
    box = Box(*raw)
    if box.is_degenerate:
        raise DataError(f"degenerate box {list(raw)} (xmin >= xmax or ymin >= ymax)", path, lineno, sid)
    return box


def _entity(
    raw: _EntityRecord, tokens: tuple[str, ...] | None, path: Path, lineno: int, sid: str, default_source: str
) -> Entity:
    start, end = raw.start, raw.end
    if (start is None) != (end is None):
        raise DataError("an entity needs both start and end, or neither", path, lineno, sid)
    text = raw.text
    if start is not None:
        if start >= end:
            raise DataError(f"bad entity offsets [{start}, {end})", path, lineno, sid)
        if tokens is not None:
            if end > len(tokens):
                raise DataError(f"entity offsets [{start}, {end}) beyond the {len(tokens)} tokens", path, lineno, sid)
            span_text = " ".join(tokens[start:end])
            if text is None:
                text = span_text
            elif "".join(text.split()) != "".join(span_text.split()):
                raise DataError(f"entity text {text!r} does not match tokens {span_text!r}", path, lineno, sid)
    if text is None or not text.strip():
        raise DataError("an entity needs a text or offsets into tokens", path, lineno, sid)
    source = raw.source or default_source
    if source not in _SOURCES and default_source == "gold":
        raise DataError(f"unknown source {source!r} (one of {', '.join(sorted(_SOURCES))})", path, lineno, sid)
    boxes = tuple(_box(b, path, lineno, sid) for b in raw.boxes or [])
    return Entity(
        text=text,
        type=raw.type,
        start=start,
        end=end,
        boxes=boxes,
        score=raw.score,
        source=source,
        decision=raw.decision,
    )


def _records(path: Path) -> Iterator[tuple[int, dict, _Record, str]]:
    """(line number, raw object, validated record, sample id) per line; DataError on a repeated id."""
    seen: set[str] = set()
    for lineno, obj in iter_json_lines(path):
        rec = _validated(obj, path, lineno)
        sid = str(rec.id)
        if sid in seen:
            raise DataError(f"duplicate id {sid}", path, lineno, sid)
        seen.add(sid)
        yield lineno, obj, rec, sid


def read_jsonl(path: str | Path) -> list[Sample]:
    """Samples of a canonical JSONL file; tokens come from ``tokens`` or by tokenising ``text``."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[Sample]:
    """The samples of a canonical JSONL file, one at a time."""
    from .tokenize import tokenize

    path = Path(path)
    for lineno, obj, rec, sid in _records(path):
        tokens = tuple(rec.tokens) if rec.tokens is not None else None
        if tokens is None:
            if rec.text is None:
                raise DataError("a sample needs tokens or text", path, lineno, sid)
            tokens = tuple(tokenize(rec.text))
        ents = tuple(_entity(e, tokens, path, lineno, sid, "gold") for e in rec.entities or [])
        size = (rec.width, rec.height) if rec.width and rec.height else None
        yield Sample(
            id=sid,
            tokens=tokens,
            entities=ents,
            image=rec.image,
            image_size=size,
            raw_text=rec.text,
            meta={k: v for k, v in obj.items() if k not in _SAMPLE_KEYS},
        )


def read_posts(path: str | Path) -> list[Sample]:
    """Unlabeled posts of a JSONL file: objects with tokens (or text, tokenised) and maybe an id (else
    ``unlabeled-LINE``), whose entities and other fields are not read, so they cannot be wrong; a line may
    also be just the tokens (a JSON list) or the text (a JSON string)."""
    from .tokenize import tokenize

    path = Path(path)
    out = []
    for lineno, obj in iter_json_lines(path, need_id=False, objects=False):
        if isinstance(obj, (list, str)):
            obj = {"tokens": obj} if isinstance(obj, list) else {"text": obj}
        elif not isinstance(obj, dict):
            raise DataError("a line must hold a post: an object, a list of tokens or a text", path, lineno)
        try:
            rec = _PostRecord.model_validate(obj)
        except ValidationError as exc:
            raise DataError(_describe(exc), path, lineno) from None
        if rec.tokens is None and rec.text is None:
            raise DataError("a post needs tokens or text", path, lineno)
        tokens = tuple(rec.tokens) if rec.tokens is not None else tuple(tokenize(rec.text))
        sid = f"unlabeled-{lineno}" if rec.id in (None, "") else str(rec.id)
        out.append(Sample(id=sid, tokens=tokens, image=rec.image or None, raw_text=rec.text))
    return out


def summary_path(out: str | Path) -> Path:
    """Where the summary of an output file is written beside it: out + ``.summary.json``."""
    return Path(str(out) + ".summary.json")


def read_predictions(path: str | Path) -> list[Prediction]:
    """Predictions of a canonical JSONL file (tokens and offsets optional)."""
    path = Path(path)
    out = []
    for lineno, obj, rec, sid in _records(path):
        tokens = tuple(rec.tokens) if rec.tokens is not None else None
        ents = tuple(_entity(e, tokens, path, lineno, sid, "tagger") for e in rec.entities or [])
        out.append(
            Prediction(
                id=sid,
                entities=ents,
                tokens=tokens,
                image=rec.image,
                missing_score=rec.missing_score,
                delegated=rec.delegated,
                maybe_missing=rec.maybe_missing,
                meta={k: v for k, v in obj.items() if k not in _PRED_KEYS},
            )
        )
    return out


def write_jsonl(items: Iterable[Sample | Prediction], path: str | Path) -> None:
    """Write samples or predictions atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        for item in items:
            fh.write(json.dumps(item.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")


def json_line(item: Sample | Prediction) -> str:
    """The canonical JSONL line of a sample or prediction, with its newline."""
    return json.dumps(item.to_dict(), ensure_ascii=False) + "\n"
