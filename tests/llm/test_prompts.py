"""Golden tests of the rendered prompts: every stage, and grounding in every dialect style, as the model reads
them (text, images as their size, the response schema). A prompt change is a visible diff of tests/llm/golden;
rewrite them with REFINEG_UPDATE_GOLDEN=1 after checking the change is meant."""

import base64
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from refineg.data.images import prepare_image
from refineg.ground import build_request as ground_request
from refineg.ground.combined import build_request as combined_request
from refineg.llm.families import FAMILIES, STYLES, resolve
from refineg.llm.typesets import load_typeset
from refineg.refine import build_request as refine_request
from refineg.synth.task import build_request as synth_request
from refineg.types import Box, Entity, Prediction, Sample

GOLDEN = Path(__file__).parent / "golden"
TYPES = load_typeset("twitter")
POST = Sample(
    "q1",
    ("RT", "@nfl", ":", "Kevin", "Durant", "joins", "the", "Warriors", "in", "Oakland"),
    (Entity("Kevin Durant", "PER", 3, 5), Entity("Warriors", "ORG", 7, 8)),
    image="q1.jpg",
)
TAGGED = Prediction(
    "q1",
    (
        Entity("Kevin Durant", "PER", 3, 5, score=0.97, source="tagger", decision="keep"),
        Entity("Warriors", "ORG", 7, 8, score=0.41, source="tagger", decision="delegate"),
    ),
    POST.tokens,
    "q1.jpg",
    delegated=True,
)
DEMO = Sample(
    "d1",
    ("Tobey", "Maguire", "bowling", "in", "1989"),
    (Entity("Tobey Maguire", "PER", 0, 2, boxes=(Box(120, 40, 420, 560),)),),
    image="d1.jpg",
)
IMAGE = prepare_image(Image.new("RGB", (1200, 800), (90, 110, 130)), 1000)
DEMO_IMAGE = prepare_image(Image.new("RGB", (702, 603), (40, 60, 80)), 1000)
# one family of each dialect style: its grounding prompt and how its demo answers are written
STYLE_FAMILY = {
    style: next(f for f in FAMILIES if f.style == style) if style != "json" else resolve("pixels", None).family
    for style in STYLES
}


def rendered(req) -> str:
    """A request as its model reads it: the text, each image as its size, then the response schema."""
    lines = [f"stage: {req.stage}", f"template: {req.template}, version {req.version}"]
    for message in req.messages:
        lines.append(f"--- {message['role']} ---")
        content = message["content"]
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part["type"] == "text":
                lines.append(part["text"])
            else:
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                w, h = Image.open(io.BytesIO(data)).size
                lines.append(f"[image {w}x{h}]")
    if req.schema is not None:
        lines += ["--- response schema ---", json.dumps(req.schema, indent=1, sort_keys=True)]
    return "\n".join(lines) + "\n"


CASES = {
    "synthesis-keep": lambda: synth_request(POST, "keep", 5, TYPES),
    "synthesis-new": lambda: synth_request(POST, "new", 3, TYPES),
    "synthesis-none": lambda: synth_request(POST.with_(entities=()), "none", 3, TYPES),
    "refinement": lambda: refine_request(POST, TAGGED, TYPES, IMAGE),
    "refinement-maybe-missing": lambda: refine_request(POST, TAGGED.with_(maybe_missing=True), TYPES),
    "combined": lambda: combined_request(POST, TAGGED, IMAGE, [(DEMO, DEMO_IMAGE)], TYPES),
    "combined-gemini": lambda: combined_request(
        POST, TAGGED, IMAGE, [(DEMO, DEMO_IMAGE)], TYPES, resolve("gemini", None).family
    ),
    **{
        f"grounding-{style}": (
            lambda fam=fam: ground_request(POST, TAGGED.entities, IMAGE, [(DEMO, DEMO_IMAGE)], fam, TYPES)
        )
        for style, fam in STYLE_FAMILY.items()
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_rendered_prompt_is_the_golden_one(case):
    path = GOLDEN / f"{case}.txt"
    text = rendered(CASES[case]())
    if os.environ.get("REFINEG_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no golden prompt {path}: run with REFINEG_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(encoding="utf-8"), (
        f"{case}: the prompt changed (see the diff); if meant, rerun with REFINEG_UPDATE_GOLDEN=1"
    )


def test_every_dialect_style_has_a_golden_prompt():
    assert {f"grounding-{s}" for s in STYLES} <= set(CASES)
