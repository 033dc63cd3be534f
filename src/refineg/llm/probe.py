"""`llm-check`: one live round trip, then (with images) a grounding probe.

The probe is a generated picture with a red square at a known place, sent after K small filler
images as a grounding request is (K demos + the query). Its answer is read by the same reader as
real grounding replies and mapped under every convention; the one that puts the square where it
is names the endpoint's box convention. The cache is never read or written here: a check talks to
the live endpoint every time.
"""

from __future__ import annotations

import time
from dataclasses import replace

from PIL import Image, ImageDraw

from ..config import LLMConfig
from ..data.images import SentImage
from ..errors import ParseError
from ..types import Box
from .client import LLMClient, LLMRequest, image_part
from .families import CONVENTIONS, Convention, Family
from .replies import read_boxes

PROBE_SIZE = (640, 400)  # neither square nor 1000 wide, so that every convention puts the square elsewhere
PROBE_BOX = Box(368, 96, 528, 256)
MIN_IOU = 0.5
PROBE_PROMPT = (
    "The last image shows one red square on a white background. Give the bounding box of the red "
    'square, as {coords}, in your usual grounding format, labelled "red square". '
    "For example: {example}"
)


def probe_image() -> Image.Image:
    """White, with a red square at PROBE_BOX."""
    im = Image.new("RGB", PROBE_SIZE, "white")
    ImageDraw.Draw(im).rectangle(
        [PROBE_BOX.xmin, PROBE_BOX.ymin, PROBE_BOX.xmax - 1, PROBE_BOX.ymax - 1], fill=(220, 20, 20)
    )
    return im


def filler_images(k: int) -> list[Image.Image]:
    """K small plain images standing in for the demonstrations."""
    return [Image.new("RGB", (96, 64), (40 + 50 * i % 200, 120, 160)) for i in range(k)]


def probe_request(family: Family, fillers: list[SentImage], probe: SentImage) -> LLMRequest:
    """The grounding probe in the family's dialect: the fillers, then the probe image."""
    example = family.render([("red square", "OTHER", [[10, 20, 110, 120]])])
    text = PROBE_PROMPT.format(coords=family.convention.describe(), example=example)
    content = [image_part(f) for f in fillers] + [image_part(probe), {"type": "text", "text": text}]
    return LLMRequest("check", "llm-check-probe", "1", [{"role": "user", "content": content}], None, "probe")


def detect(text: str, probe: SentImage, expected: Convention) -> dict:
    """Which convention puts the answer's box on the square: IoU under each, the best, and whether it is the
    expected one."""
    try:
        reading = read_boxes(text)
    except ParseError as exc:
        return {"detected": None, "iou": {}, "matches": False, "error": str(exc)}
    conventions = {**CONVENTIONS, expected.name: expected}
    ious = {}
    for name, conv in conventions.items():
        boxes = [box for b in reading.boxes if (box := conv.to_original(b.values, probe)[0]) is not None]
        ious[name] = round(max((b.iou(PROBE_BOX) for b in boxes), default=0.0), 3)
    best = max(ious, key=lambda n: (ious[n], n == expected.name)) if ious else None
    detected = best if best is not None and ious[best] >= MIN_IOU else None
    same = detected is not None and (detected == expected.name or ious.get(expected.name, 0.0) >= MIN_IOU)
    return {"detected": detected, "iou": ious, "matches": same, "boxes": len(reading.boxes)}


CHECK_BACKOFF = (0.2, 1.0)  # first and longest wait between retries: a check answers in seconds, not minutes


def check(config: LLMConfig, images: int = 0) -> dict:
    """A live round trip (model, latency, JSON-schema answer), and with images > 0 the grounding probe. ``ok``
    says whether the endpoint is usable as configured; ``error`` says what is wrong and how to fix it. Retries wait
    at most a second: the check answers in seconds."""
    config = config.model_copy(
        update={
            "cache": False,
            "backoff_base": min(config.backoff_base, CHECK_BACKOFF[0]),
            "backoff_max": min(config.backoff_max, CHECK_BACKOFF[1]),
            "give_up_after": 0,
        }
    )
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["pong"]}}, "required": ["answer"]}
    req = LLMRequest(
        "check",
        "llm-check",
        "2",
        [{"role": "user", "content": 'Reply with the JSON object {"answer": "pong"} and nothing else.'}],
        schema,
        "check",
    )
    with LLMClient(config, show_progress=False) as client:
        t0 = time.perf_counter()
        result = client.ask(req, _pong)
        reachable = result.reason != "transport"
        report = {
            "model": client.model,
            "base_url": client.base_url,
            "reachable": reachable,
            "latency_s": round(time.perf_counter() - t0, 3) if reachable else None,
            "json_schema_requested": config.json_schema,
            "json_valid": result.ok,
            "error": _problem(result, config),
            "box_format": client.dialect.family.name,
            "box_format_note": client.dialect.note,
        }
        if images and reachable:
            report["probe"] = _probe(client, images)
        report["usage"] = client.summary()["total"]
    probe = report.get("probe")
    report["ok"] = reachable and result.ok and (probe is None or (probe["images_accepted"] and probe["matches"]))
    return report


def _problem(result, config: LLMConfig) -> str | None:
    """What went wrong with the round trip, and the fix, in words (None when nothing did)."""
    if result.ok:
        return None
    if result.reason == "transport":
        return result.error
    got = (result.raw or "").strip().replace("\n", " ")[:120]
    fix = (
        ("the backend may ignore JSON schemas (try --no-json-schema), or the model is too small to follow instructions")
        if config.json_schema
        else "the model does not follow the instruction"
    )
    return f"the model answered, but not with the JSON object asked for (got {got!r}): {fix}"


def _pong(text: str) -> str:
    from .jsonparse import last_json_object

    answer = last_json_object(text).get("answer")
    if answer != "pong":
        raise ParseError(f"expected the answer 'pong', got {answer!r}")
    return answer


def _probe(client: LLMClient, n_images: int) -> dict:
    family = client.dialect.family
    probe = client.image(probe_image())
    fillers = [client.image(im) for im in filler_images(n_images - 1)]
    res = client.ask(probe_request(family, fillers, probe), lambda text: text)
    accepted = res.reason != "transport"
    out = {"images_sent": n_images, "images_accepted": accepted, "sent_size": list(probe.sent_size)}
    if not accepted:
        out["images_error"] = res.error
        if getattr(res.exception, "refusal", None) == "no_images" or n_images == 1:
            return {**out, "detected": None, "matches": False}  # asking again with fewer images cannot help
        res = client.ask(probe_request(family, [], probe), lambda text: text)  # still learn the convention
        if res.reason == "transport":
            return {**out, "detected": None, "matches": False, "error": res.error}
    out["answer"] = (res.raw or "")[:400]
    return {**out, **detect(res.raw or "", replace(probe, data_url=""), family.convention)}
