"""Read boxes out of what real multimodal LLMs answer, whatever their dialect.

A reply may hold reasoning (``<think>...</think>``, or only the closing tag), JSON objects and lists
(fenced, split over several fences, bare, or broken), or the tag formats of model families
(``<ref>a dog</ref><box>[[..]]</box>``, ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
``<|det|>[[..]]<|/det|>``, ``<|begin_of_box|>..<|end_of_box|>``), with or without the special
tokens. ``read_boxes`` returns every box with the label it was given, in the reply's own
coordinates; which convention those are in is the caller's business (see ``families``).
Bad boxes are rejected one at a time and counted; they never sink the whole reply.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import json_repair

from ..errors import ParseError

NUM = r"-?\d+(?:\.\d+)?"
_NUM_RE = re.compile(NUM)

# Everything a reasoning model says before its answer; only the text after the last closing tag counts.
_THINK_CLOSE = re.compile(r"</think>|◁/think▷|<\|end_of_thought\|>|</reasoning>", re.I)
_THINK_OPEN = re.compile(r"<think>|◁think▷|<\|begin_of_thought\|>|<reasoning>", re.I)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)(?:```|$)", re.S)

# A box group: a family's box tag (closing tag optional, for truncated replies), a Qwen2-VL point
# pair, or a bracket holding only numbers (CogVLM separates boxes with ';').
_GROUP = re.compile(
    r"(?P<tag><box>|<\|box_start\|>|<\|det\|>|<\|begin_of_box\|>)(?P<body>.*?)"
    r"(?:</box>|<\|box_end\|>|<\|/det\|>|<\|end_of_box\|>|(?=<\|?/?(?:ref|box|det|object_ref))|$)"
    rf"|(?P<pair>\(\s*{NUM}\s*,\s*{NUM}\s*\)\s*,?\s*\(\s*{NUM}\s*,\s*{NUM}\s*\))"
    r"|(?P<list>\[[\[\]\d\s,;.\-]*\])",
    re.S,
)
_REF = re.compile(r"<ref>(.*?)</ref>|<\|ref\|>(.*?)<\|/ref\|>|<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.S)
_CLOSED = re.compile(r"(?:</box>|<\|box_end\|>|<\|/det\|>|<\|end_of_box\|>)$")
_ANY_TAG = re.compile(r"<\|?/?[a-zA-Z_]+\|?>")

# JSON keys: which hold boxes, which hold points, which name the thing.
BOX_KEYS = (
    "bbox_2d",
    "box_2d",
    "bbox",
    "bboxes",
    "boxes",
    "box",
    "bounding_box",
    "bounding_boxes",
    "coordinates",
    "coords",
    "xyxy",
    "rect",
    "region",
    "location",
    "position",
)
_BOXY_KEY = re.compile(r"box|coord|rect|region|locat|position", re.I)
_POINT_KEY = re.compile(r"point", re.I)
LABEL_KEYS = (
    "label",
    "text",
    "entity",
    "name",
    "entity_text",
    "object",
    "target",
    "phrase",
    "ref",
    "description",
    "name_en",
    "caption",
    "category",
    "class",
    "names",
    "title",
)
_CORNER_KEYS = (
    ("x_min", "y_min", "x_max", "y_max"),
    ("xmin", "ymin", "xmax", "ymax"),
    ("x1", "y1", "x2", "y2"),
    ("left", "top", "right", "bottom"),
    ("x0", "y0", "x1", "y1"),
)


@dataclass(frozen=True)
class RawBox:
    """Four numbers as the reply wrote them, with the label it gave them (None: unlabelled)."""

    label: str | None
    values: tuple[float, float, float, float]


@dataclass
class Reading:
    """What a reply said: boxes, labels answered with no box, points, and counts of what was rejected."""

    boxes: list[RawBox] = field(default_factory=list)
    empty_labels: list[str] = field(default_factory=list)
    points: int = 0
    counts: Counter = field(default_factory=Counter)
    structured: bool = False  # the reply held JSON or box tags at all

    @property
    def answered(self) -> bool:
        """True when the reply said anything usable, even 'nothing is in the image'."""
        return bool(self.boxes or self.empty_labels or self.structured)


def answer_text(text: str) -> str:
    """The part of a reply after any reasoning block; an unclosed reasoning block leaves nothing."""
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        return text[closes[-1].end() :]
    opened = _THINK_OPEN.search(text)
    return text[: opened.start()] if opened else text


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = _NUM_RE.fullmatch(v.strip())
        return float(m.group()) if m else None
    return None


def _as_box(v: Any, counts: Counter) -> tuple[float, float, float, float] | None:
    """Four finite numbers from a list, a stringified list or a corner dict; None (counted) otherwise."""
    if isinstance(v, str):
        nums = _NUM_RE.findall(v)
        v = [float(n) for n in nums] if len(nums) == 4 else v
    if isinstance(v, dict):
        v = _corners(v)
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        counts["box_rejected_shape"] += 1
        return None
    nums = [_number(x) for x in v]
    if any(n is None or not math.isfinite(n) for n in nums):
        counts["box_rejected_not_numeric"] += 1
        return None
    return tuple(nums)  # type: ignore[return-value]


def _corners(d: dict) -> list | None:
    low = {str(k).lower(): v for k, v in d.items()}
    for keys in _CORNER_KEYS:
        if all(k in low for k in keys):
            return [low[k] for k in keys]
    if all(k in low for k in ("x", "y")) and any(k in low for k in ("width", "w")):
        x, y, w, h = (
            _number(low.get(k))
            for k in ("x", "y", "width" if "width" in low else "w", "height" if "height" in low else "h")
        )
        if None not in (x, y, w, h):
            return [x, y, x + w, y + h]
    return None


def _is_box_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 4 and all(_number(x) is not None for x in v)


def _boxes_in(v: Any, counts: Counter) -> list[tuple[float, float, float, float]] | None:
    """The boxes a box-valued field holds (one box, a list of boxes, or []); None when it holds none."""
    if v is None:
        counts["box_rejected_null"] += 1
        return []
    if isinstance(v, dict) and _corners(v) is None:
        return None
    if _is_box_list(v) or isinstance(v, (str, dict)):
        box = _as_box(v, counts)
        return [box] if box else []
    if isinstance(v, list):
        out = []
        for item in v:
            box = _as_box(item, counts) if not isinstance(item, list) or len(item) != 1 else _as_box(item[0], counts)
            if box:
                out.append(box)
        return out
    counts["box_rejected_shape"] += 1
    return []


def _label_of(d: dict) -> str | None:
    low = {str(k).lower(): v for k, v in d.items()}
    for key in LABEL_KEYS:
        v = low.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()
        if isinstance(v, dict):  # e.g. "names": {"en": "...", "zh": "..."}
            nested = _label_of(v) or next((s for s in v.values() if isinstance(s, str) and s.strip()), None)
            if nested:
                return nested.strip()
    return next(
        (v.strip() for k, v in d.items() if isinstance(v, str) and v.strip() and str(k).lower() != "type"), None
    )


def _walk(obj: Any, label: str | None, reading: Reading) -> None:
    """Collect boxes from any JSON shape: lists of items, items with box keys, or {label: box}."""
    counts = reading.counts
    if isinstance(obj, list):
        if _is_box_list(obj):
            box = _as_box(obj, counts)
            if box:
                reading.boxes.append(RawBox(label, box))
            return
        for item in obj:
            _walk(item, label, reading)
        return
    if not isinstance(obj, dict):
        return
    if _corners(obj) is not None:
        box = _as_box(obj, counts)
        if box:
            reading.boxes.append(RawBox(label, box))
        return
    own = _label_of(obj) or label
    had_box_key = False
    for key, value in obj.items():
        k = str(key)
        if _POINT_KEY.search(k) and not _BOXY_KEY.search(k):
            reading.points += len(value) if isinstance(value, list) and value and isinstance(value[0], list) else 1
            continue
        if k.lower() in BOX_KEYS or _BOXY_KEY.search(k):
            boxes = _boxes_in(value, counts)
            if boxes is None:
                _walk(value, own, reading)
                continue
            had_box_key = True
            reading.boxes.extend(RawBox(own, b) for b in boxes)
            if not boxes and own and value == []:
                reading.empty_labels.append(own)
        elif isinstance(value, (list, dict)):
            if (
                isinstance(value, list)
                and (_is_box_list(value) or (value and all(_is_box_list(v) for v in value)))
                and str(k).lower() not in LABEL_KEYS
            ):
                reading.boxes.extend(RawBox(k, b) for b in _boxes_in(value, counts) or [])  # {"Kevin Durant": [..]}
            else:
                _walk(value, own, reading)
    if (
        not had_box_key
        and own
        and any(str(k).lower() in ("visible", "in_image", "present") and v is False for k, v in obj.items())
    ):
        reading.empty_labels.append(own)


def json_blocks(text: str) -> list[Any]:
    """Every JSON value in text: fenced blocks first (closed or not), else bare objects and lists, repaired if
    broken."""
    fenced = [m.group(1) for m in _FENCE.finditer(text) if m.group(1).strip()]
    if fenced:
        return [v for v in (_load(b) for b in fenced) if isinstance(v, (dict, list))]
    out, i, decoder = [], 0, json.JSONDecoder()
    while True:
        starts = [p for p in (text.find("{", i), text.find("[", i)) if p != -1]
        if not starts:
            break
        i = min(starts)
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            if text[i] == "{":  # a broken object: let the repairer read from here to the end
                value = _load(text[i:])
                if isinstance(value, (dict, list)) and value:
                    out.append(value)
                break
            i += 1
            continue
        if isinstance(value, (dict, list)):
            out.append(value)  # [] too: "nothing is in the image"
        i = end
    return out


def _load(block: str) -> Any:
    try:
        return json.loads(block)
    except json.JSONDecodeError:
        return json_repair.loads(block)


def _clean_label(text: str) -> str | None:
    line = _ANY_TAG.sub(" ", text).strip().splitlines()[-1:] or [""]
    label = re.sub(r"^[\s\-*•\d.)]*", "", line[0])
    label = re.sub(r"(?i)\b(?:is\s+)?(?:at|located at|in the box|box|bbox|coordinates)\s*$", "", label)
    label = label.strip(" \t:=,;\"'`()[]{}*-").strip()
    return label[-120:] or None


def _tag_boxes(text: str, reading: Reading) -> None:
    """Boxes of the tag formats and of bare coordinate groups, labelled by the ref tag or the text before them."""
    prev_end = 0
    last_ref: tuple[int, str] | None = None
    refs = [(m.end(), next(g for g in m.groups() if g is not None)) for m in _REF.finditer(text)]
    for m in _GROUP.finditer(text):
        before = text[prev_end : m.start()]
        ref = [r for r in refs if prev_end <= r[0] <= m.start()]
        if ref:
            last_ref = ref[-1]
        label = (
            ref[-1][1].strip()
            if ref
            else (_clean_label(before) or (last_ref[1].strip() if last_ref and not before.strip() else None))
        )
        body = m.group("body") if m.group("tag") else m.group("pair") or m.group("list")
        nums = [float(n) for n in _NUM_RE.findall(body or "")]
        prev_end = m.end()
        if m.group("tag"):
            reading.structured = True
            if m.end() == len(text) and not body.rstrip().endswith((")", "]")) and not _CLOSED.search(m.group()):
                reading.counts["box_rejected_truncated"] += (
                    1  # the reply was cut inside the tag: its last number may be too
                )
                continue
        if not nums:
            continue
        if m.group("list") and len(nums) < 4:
            continue  # [1], [] and the like are not boxes
        reading.structured = True
        if len(nums) % 4:
            reading.counts["box_rejected_shape"] += 1
        for k in range(0, len(nums) - len(nums) % 4, 4):
            reading.boxes.append(RawBox(label, tuple(nums[k : k + 4])))  # type: ignore[arg-type]


def _json_reading(answer: str, fits) -> Reading:
    reading = Reading()
    blocks = []
    for block in json_blocks(answer):
        r = Reading()
        _walk(block, None, r)
        reading.counts.update(r.counts)
        reading.points += r.points
        reading.structured = True
        if r.boxes or r.empty_labels:
            blocks.append(r)
    fitting = [b for b in blocks if fits is None or all(fits(x.values) for x in b.boxes)] or blocks
    by_label: dict[str | None, list[RawBox]] = {}
    for b in fitting:
        for lab in dict.fromkeys([x.label for x in b.boxes] + list(b.empty_labels)):  # the reply's order, not a set's
            by_label[lab] = [x for x in b.boxes if x.label == lab]
    reading.boxes = [x for boxes in by_label.values() for x in boxes]
    reading.empty_labels = [lab for lab, boxes in by_label.items() if lab is not None and not boxes]
    return reading


def read_boxes(text: str | None, fits=None) -> Reading:
    """Every labelled box of a reply. ``fits(values) -> bool`` says which boxes fit the declared convention:
    of several JSON blocks, those whose boxes fit are preferred, and a later block overrides an earlier
    one's boxes for the same label. ParseError when the reply holds no answer at all."""
    answer = answer_text(text or "")
    if not answer.strip():
        raise ParseError("the reply is empty after its reasoning")
    reading = _json_reading(answer, fits)
    tags = Reading()
    _tag_boxes(answer, tags)
    labelled = any(b.label for b in reading.boxes) or reading.empty_labels
    if tags.boxes and (
        (not reading.boxes and not reading.empty_labels) or (not labelled and any(b.label for b in tags.boxes))
    ):
        tags.counts.update(reading.counts)
        tags.points += reading.points
        reading = tags  # <ref>a dog</ref><box>[[..]]</box>: the bracket is valid JSON, but the label is in the tags
    reading.boxes = list(dict.fromkeys(reading.boxes))
    if reading.points:
        reading.counts["points_ignored"] += reading.points
    if not reading.answered:
        raise ParseError("the reply holds no box, no JSON and no box tag")
    return reading
