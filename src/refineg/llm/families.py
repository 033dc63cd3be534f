"""Model families and their box dialects: one table entry a family.

An entry says how a family's model names look, which coordinate convention its boxes use, the
frame it sees an image in (Qwen2.5-VL resizes to multiples of 28 and answers in that frame), the
grounding template that asks in its own dialect, and how a box is written in that dialect (for the
demonstrations). Every family's replies are read by the one reader in ``replies``. Adding a family
is adding an entry to ``FAMILIES``.

Sources checked for each convention: Qwen2.5-VL cookbooks (absolute ``bbox_2d`` in the resized
input, ``smart_resize`` with factor 28), Qwen2-VL and Qwen3-VL model cards (0-1000 relative),
InternVL docs (``<ref>..</ref><box>[[..]]</box>``, 0-1000), DeepSeek-VL2 README and demos
(``<|det|>``, divided by 999), Gemini docs (``box_2d`` as [ymin, xmin, ymax, xmax], 0-1000),
GLM-4.xV, CogVLM and MiniCPM-V model cards (0-1000; CogVLM zero-pads to three digits).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..data.images import SentImage, qwen25_frame
from ..errors import ConfigError
from ..types import Box

MIN_INSIDE = 0.5  # a box less than half inside the image is not a clipping matter: it is rejected


@dataclass(frozen=True)
class Convention:
    """How four numbers of a reply map to a box: pixels of the sent image, or fractions of a scale."""

    name: str
    scale: float | None = None  # None: pixels of the image as sent
    yx: bool = False  # [ymin, xmin, ymax, xmax]

    def to_original(self, values: Sequence[float], image: SentImage) -> tuple[Box | None, str]:
        """The box in original pixels, clipped to the image, and what happened: ``ok``, ``clipped``, or why it
        was rejected: ``reversed`` (a max before its min: a box of another convention, never repaired) or
        ``outside`` (less than half of it in the image, or absurd numbers)."""
        a, b, c, d = values
        x1, y1, x2, y2 = (b, a, d, c) if self.yx else (a, b, c, d)
        if x2 < x1 or y2 < y1:
            return None, "reversed"
        w, h = image.original_size
        if self.scale is None:
            sx, sy = image.scale
        else:
            sx, sy = w / self.scale, h / self.scale
        raw = Box(x1 * sx, y1 * sy, x2 * sx, y2 * sy)
        box = raw.clipped(w, h)
        if not all(math.isfinite(v) for v in (raw.xmin, raw.ymin, raw.xmax, raw.ymax)) or (
            raw.area > 0 and box.area < MIN_INSIDE * raw.area
        ):
            return None, "outside"
        return box, "clipped" if box != raw else "ok"

    def from_original(self, box: Box, image: SentImage) -> list[int | float]:
        """A box in original pixels written in this convention (for demonstrations)."""
        w, h = image.original_size
        if self.scale is None:
            sent = image.to_sent(box)
            vals = [sent.xmin, sent.ymin, sent.xmax, sent.ymax]
            vals = [round(v) for v in vals]
        else:
            vals = [
                box.xmin / w * self.scale,
                box.ymin / h * self.scale,
                box.xmax / w * self.scale,
                box.ymax / h * self.scale,
            ]
            vals = [round(v, 3) for v in vals] if self.scale <= 1 else [round(v) for v in vals]
        return [vals[1], vals[0], vals[3], vals[2]] if self.yx else vals

    def fits(self, values: Sequence[float], image: SentImage | None) -> bool:
        """True when the numbers are in this convention's range (with a little slack past the edge)."""
        if any(v < -0.05 * (self.scale or 1000) for v in values):
            return False
        if self.scale is not None:
            return max(values) <= self.scale * 1.02 and (self.scale != 1 or max(values) <= 1.02)
        if image is None:
            return True
        w, h = image.sent_size
        xs, ys = (values[1::2], values[0::2]) if self.yx else (values[0::2], values[1::2])
        return max(xs) <= w * 1.05 and max(ys) <= h * 1.05

    def describe(self) -> str:
        """The convention in words, for prompts."""
        order = "[ymin, xmin, ymax, xmax]" if self.yx else "[xmin, ymin, xmax, ymax]"
        if self.scale is None:
            return f"{order} in pixels of the image as you see it, with (0, 0) at the top left"
        top = "1" if self.scale == 1 else str(int(self.scale))
        return f"{order} as fractions of the image size scaled to 0-{top}, with (0, 0) at the top left"


CONVENTIONS = {
    "pixels": Convention("pixels"),
    "norm1000": Convention("norm1000", 1000.0),
    "norm1000-yx": Convention("norm1000-yx", 1000.0, yx=True),
    "norm1": Convention("norm1", 1.0),
}


def _fmt(vals: Sequence[float]) -> str:
    return ", ".join(str(v) for v in vals)


def _boxes_text(boxes: list[list]) -> str:
    return "[" + ", ".join(f"[{_fmt(b)}]" for b in boxes) + "]"


Answer = list[tuple[str, str, list[list]]]  # (text, type, boxes in the family's convention) per entity


def _json_answer(key: str) -> Callable[[Answer], str]:
    def render(answer: Answer) -> str:
        return json.dumps([{key: b, "label": text} for text, _, boxes in answer for b in boxes], ensure_ascii=False)

    return render


def _lines(line: Callable[[str, list[list]], str]) -> Callable[[Answer], str]:
    return lambda answer: "\n".join(line(text, boxes) for text, _, boxes in answer)


# How a whole answer is written in each dialect (for the demonstrations); the template asks for the same.
STYLES: dict[str, Callable[[Answer], str]] = {
    "json": lambda answer: json.dumps(
        {"entities": [{"text": t, "type": ty, "boxes": b} for t, ty, b in answer]}, ensure_ascii=False
    ),
    "bbox_2d": _json_answer("bbox_2d"),
    "box_2d": _json_answer("box_2d"),
    "ref-box": _lines(lambda t, b: f"<ref>{t}</ref><box>{_boxes_text(b)}</box>"),
    "ref-det": _lines(lambda t, b: f"<|ref|>{t}<|/ref|><|det|>{_boxes_text(b)}<|/det|>"),
    "qwen2-tags": _lines(
        lambda t, b: (
            f"<|object_ref_start|>{t}<|object_ref_end|>"
            + ("".join(f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>" for x1, y1, x2, y2 in b) or " none")
        )
    ),
    "glm-box": _lines(lambda t, b: f"{t}: " + (f"<|begin_of_box|>{_boxes_text(b)}<|end_of_box|>" if b else "none")),
    "minicpm": _lines(
        lambda t, b: f"<ref>{t}</ref>" + ("".join(f"<box>{' '.join(map(str, x))}</box>" for x in b) or " none")
    ),
    "cogvlm": _lines(
        lambda t, b: (
            f"{t} " + ("[[" + ";".join(",".join(f"{int(v):03d}" for v in x) for x in b) + "]]" if b else "none")
        )
    ),
}


@dataclass(frozen=True)
class Family:
    """One model family: name pattern, box convention, image frame, grounding dialect and template."""

    name: str
    pattern: str
    convention: Convention
    style: str = "json"
    template: str = "ground.txt"
    frame: Callable[[tuple[int, int]], tuple[int, int]] | None = None

    def render(self, answer: Answer) -> str:
        """A whole grounding answer written in this family's dialect."""
        return STYLES[self.style](answer)


_N1000 = CONVENTIONS["norm1000"]
FAMILIES: tuple[Family, ...] = (
    Family("qwen3-vl", r"qwen3[-_.]?vl", _N1000, "bbox_2d", "ground_bbox_2d.txt"),
    Family("qwen2.5-vl", r"qwen2[._]?5[-_.]?vl", CONVENTIONS["pixels"], "bbox_2d", "ground_bbox_2d.txt", qwen25_frame),
    Family("qwen2-vl", r"qwen2[-_.]?vl", _N1000, "qwen2-tags", "ground_tags.txt"),
    Family("internvl", r"internvl", _N1000, "ref-box", "ground_tags.txt"),
    Family("glm-4v", r"glm-?4(?:\.\d+)?v", _N1000, "glm-box", "ground_tags.txt"),
    Family("deepseek-vl2", r"deepseek[-_.]?vl", Convention("norm999", 999.0), "ref-det", "ground_tags.txt"),
    Family("gemini", r"gemini", CONVENTIONS["norm1000-yx"], "box_2d", "ground_box_2d.txt"),
    Family("gpt-4o", r"gpt-?4o|gpt-?4\.1|gpt-?5|(?:^|/)o[134](?:-|$)", CONVENTIONS["pixels"]),
    Family("claude", r"claude", CONVENTIONS["pixels"]),
    Family("minicpm-v", r"minicpm", _N1000, "minicpm", "ground_tags.txt"),
    Family("kimi-vl", r"kimi[-_.]?vl", CONVENTIONS["norm1"]),
    Family("cogvlm", r"cog(?:vlm|agent)", _N1000, "cogvlm", "ground_tags.txt"),
)
BY_NAME = {f.name: f for f in FAMILIES}


@dataclass(frozen=True)
class Resolved:
    """The family a run uses and how it was chosen (for the run summary)."""

    family: Family
    note: str


def resolve(box_format: str, model: str | None) -> Resolved:
    """The family for ``--llm-box-format`` (a family, a convention, or auto: from the model name)."""
    fmt = (box_format or "auto").strip().lower()
    if fmt in BY_NAME:
        return Resolved(BY_NAME[fmt], f"box format {fmt} (given)")
    if fmt in CONVENTIONS:
        return Resolved(
            Family(fmt, "", CONVENTIONS[fmt]), f"box convention {fmt} (given), asked in refineg's JSON format"
        )
    if fmt != "auto":
        alias = next((fam for fam in FAMILIES if re.search(fam.pattern, fmt)), None)  # qwen2_5_vl, gpt-4o-mini...
        if alias is not None:
            return Resolved(alias, f"box format {alias.name} (given as {box_format!r})")
        choices = ", ".join(["auto", *CONVENTIONS, *BY_NAME])
        raise ConfigError(f"unknown box format {box_format!r}: one of {choices}")
    name = (model or "").lower()
    for fam in FAMILIES:
        if re.search(fam.pattern, name):
            return Resolved(fam, f"box format auto: model {model!r} is {fam.name} ({fam.convention.name})")
    return Resolved(
        Family("pixels", "", CONVENTIONS["pixels"]),
        f"box format auto: model {model!r} matches no known family; assumed pixels of the sent image "
        "(set --llm-box-format if its boxes come out wrong; `refineg llm-check --images` tells)",
    )
