"""Label Studio: the labeling configuration, tasks with refineg's predictions as pre-annotations, and an export
read back into samples.

A task's data holds the post's ``text`` (its tokens joined by spaces), its ``image`` (a data URL, or a URL
under a prefix of yours), and ``refineg_id`` / ``image_name`` to find it again. Pre-annotations are text spans
(``entity``), rectangles on the image (``box``) and a relation from each rectangle to its span, each with
refineg's score. An export is read back with character spans turned into tokens and percent rectangles into
pixels of the original image; a task that cannot be turned into a sample is named in the error.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ..errors import DataError
from ..types import Box, Entity, Prediction, Sample
from .images import prepare_image
from .textio import atomic_open, read_text
from .tokenize import tokenize_with_offsets

COLORS = ["#d7263d", "#1b65b0", "#2e933c", "#f08a24", "#8e44ad", "#16a2a6", "#b5651d", "#e84393", "#7f8c8d"]
HEADER = (
    "Mark every named entity in the text; draw a box on each one the image shows; link each box to its "
    "entity (select the box, then its entity, and add a relation)."
)
THUMB_SIDE = 1024  # images embedded in tasks are sent at most this large (boxes stay in original pixels)


def label_config(types: Sequence[str]) -> str:
    """The labeling configuration: text spans with our types, rectangles on the image, and a relation that links
    each rectangle to the span it shows."""
    labels = "\n".join(
        f"    <Label value={quoteattr(t)} background={quoteattr(COLORS[k % len(COLORS)])}/>"
        for k, t in enumerate(types)
    )
    return f"""<View>
  <Header value="{HEADER}"/>
  <Labels name="entity" toName="text">
{labels}
  </Labels>
  <Text name="text" value="$text" granularity="word"/>
  <RectangleLabels name="box" toName="image">
{labels}
  </RectangleLabels>
  <Image name="image" value="$image" zoom="true"/>
  <Relations>
    <Relation value="shows"/>
  </Relations>
</View>
"""


def _char_spans(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Each token's character span in the tokens joined by single spaces."""
    spans, at = [], 0
    for t in tokens:
        spans.append((at, at + len(t)))
        at += len(t) + 1
    return spans


def task(
    sample: Sample,
    pred: Prediction | None,
    image_url: str | None,
    size: tuple[int, int] | None,
    model_version: str,
    risk: float | None = None,
) -> dict:
    """One task: the post, its image, and (with a prediction) pre-annotations carrying refineg's scores."""
    data = {"text": " ".join(sample.tokens), "refineg_id": sample.id, "image_name": sample.image or ""}
    if image_url is not None:
        data["image"] = image_url
    out: dict[str, Any] = {"data": data}
    if pred is None:
        return out
    spans = _char_spans(sample.tokens)
    result = []
    for k, e in enumerate(pred.entities):
        start, end = spans[e.start][0], spans[e.end - 1][1]
        result.append(
            {
                "id": f"e{k}",
                "from_name": "entity",
                "to_name": "text",
                "type": "labels",
                "value": {"start": start, "end": end, "text": data["text"][start:end], "labels": [e.type]},
                **({"score": round(e.score, 4)} if e.score is not None else {}),
            }
        )
        if size is None:
            continue
        w, h = size
        for n, b in enumerate(e.boxes):
            rid = f"b{k}_{n}"
            result.append(
                {
                    "id": rid,
                    "from_name": "box",
                    "to_name": "image",
                    "type": "rectanglelabels",
                    "original_width": w,
                    "original_height": h,
                    "image_rotation": 0,
                    "value": {
                        "x": 100 * b.xmin / w,
                        "y": 100 * b.ymin / h,
                        "width": 100 * (b.xmax - b.xmin) / w,
                        "height": 100 * (b.ymax - b.ymin) / h,
                        "rotation": 0,
                        "rectanglelabels": [e.type],
                    },
                }
            )
            result.append(
                {"from_id": rid, "to_id": f"e{k}", "type": "relation", "direction": "right", "labels": ["shows"]}
            )
    out["predictions"] = [
        {"model_version": model_version, "result": result, **({"score": round(risk, 4)} if risk is not None else {})}
    ]
    return out


def image_for_task(path: Path | None, url_prefix: str | None) -> tuple[str | None, tuple[int, int] | None]:
    """The image a task shows (a data URL, or url_prefix + the file name) and its original size."""
    if path is None:
        return None, None
    sent = prepare_image(path, THUMB_SIDE)
    return (url_prefix + html.escape(path.name) if url_prefix else sent.data_url), sent.original_size


def write_tasks(tasks: list[dict], path: str | Path) -> None:
    """Tasks as Label Studio imports them: one JSON list."""
    with atomic_open(path) as fh:
        json.dump(tasks, fh, ensure_ascii=False, indent=1)


# ---- reading an export back ---------------------------------------------------------------------------------


def is_export(data: Any) -> bool:
    """True for a Label Studio JSON export: a list of tasks with data and annotations."""
    return (
        isinstance(data, list)
        and bool(data)
        and all(isinstance(t, dict) and "data" in t for t in data[:5])
        and any("annotations" in t for t in data[:5])
    )


def read_export(path: str | Path) -> list[Sample]:
    """The posts of a Label Studio JSON export with their annotated entities and boxes (each task's latest
    annotation that was not skipped); a DataError names every task that cannot be read."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"broken JSON: {exc.msg}", path, exc.lineno) from None
    if not is_export(data):
        raise DataError("not a Label Studio JSON export (a list of tasks with data and annotations)", path)
    samples, problems = [], []
    for t in data:
        try:
            samples.append(_sample(t))
        except ValueError as exc:
            problems.append(f"task {t.get('id', '?')} ({t.get('data', {}).get('refineg_id', 'no id')}): {exc}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"{len(problems)} task(s) cannot be converted: " + "; ".join(problems[:5]) + more, path)
    return samples


def _sample(t: dict) -> Sample:
    data = t.get("data") or {}
    text = data.get("text")
    if not isinstance(text, str):
        raise ValueError("its data has no text")
    done = [a for a in t.get("annotations", []) if not a.get("was_cancelled")]
    if not done:
        raise ValueError("it has no annotation (skipped or not labelled yet)")
    result = max(done, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0)).get("result", [])
    toks = tokenize_with_offsets(text)
    spans = {r["id"]: r for r in result if r.get("type") == "labels"}
    rects = {r["id"]: r for r in result if r.get("type") == "rectanglelabels"}
    links = [(r["from_id"], r["to_id"]) for r in result if r.get("type") == "relation"]
    owner = {}
    for a, b in links:  # either direction: box -> entity or entity -> box
        rect, span = (a, b) if a in rects else (b, a)
        if rect in rects and span in spans:
            owner[rect] = span
    entities = []
    for sid, r in spans.items():
        v = r["value"]
        covered = [k for k, (_, s, e) in enumerate(toks) if s < v["end"] and e > v["start"]]
        if not covered:
            raise ValueError(f"the span {v.get('text')!r} covers no word")
        start, end = covered[0], covered[-1] + 1
        if toks[start][1] != v["start"] or toks[end - 1][2] != v["end"]:
            raise ValueError(f"the span {v.get('text')!r} ({v['start']}-{v['end']}) does not start and end at words")
        boxes = tuple(_pixels(rects[rid]) for rid, span in owner.items() if span == sid)
        entities.append(Entity(" ".join(tok for tok, _, _ in toks[start:end]), v["labels"][0], start, end, boxes))
    unlinked = [rid for rid in rects if rid not in owner]
    for rid in unlinked:  # a box with no relation goes to the one entity of its type, if there is exactly one
        kind = rects[rid]["value"]["rectanglelabels"][0]
        same = [k for k, e in enumerate(entities) if e.type == kind]
        if len(same) != 1:
            raise ValueError(f"a {kind} box is linked to no entity (add a relation from it to its entity)")
        entities[same[0]] = entities[same[0]].with_(boxes=entities[same[0]].boxes + (_pixels(rects[rid]),))
    size = next(((r["original_width"], r["original_height"]) for r in rects.values()), None)
    return Sample(
        str(data.get("refineg_id") or t.get("id")),
        tuple(tok for tok, _, _ in toks),
        tuple(sorted(entities, key=lambda e: e.start)),
        image=data.get("image_name") or None,
        image_size=size,
        raw_text=text,
    )


def _pixels(r: dict) -> Box:
    """A Label Studio rectangle (percent of the image) in pixels of the original image."""
    w, h, v = r["original_width"], r["original_height"], r["value"]
    return Box(
        round(v["x"] * w / 100, 2),
        round(v["y"] * h / 100, 2),
        round((v["x"] + v["width"]) * w / 100, 2),
        round((v["y"] + v["height"]) * h / 100, 2),
    )
