"""A gold-box oracle MLLM for the replay server: it finds the post a request asks about and answers
its gold entities with their gold boxes, in pixels of the image the request sent, in refineg's JSON.

One answer fits every request kind (refinement reads the entity list, grounding and the combined
call read the boxes too), so benchmarks measure the pipeline's plumbing and its call budget, not a
model. ``python -m refineg.testing.oracle`` is not provided: use it through ``FakeOpenAIServer``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..eval.metrics import normalise
from ..types import Sample
from .fake_openai import Reply, request_text


def _last_image_size(body: dict) -> tuple[int, int] | None:
    content = body["messages"][0]["content"]
    urls = (
        [p["image_url"]["url"] for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
        if isinstance(content, list)
        else []
    )
    if not urls:
        return None
    return Image.open(io.BytesIO(base64.b64decode(urls[-1].split(",", 1)[1]))).size


def placeholder_images(samples: Sequence[Sample], folder: Path, size: tuple[int, int] = (640, 480)) -> None:
    """A plain image of each sample's size (the tweet images are not available offline), for the oracle to
    answer in."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in samples:
        Image.new("RGB", s.image_size or size, (90, 110, 130)).save(folder / s.image, quality=60)


class GoldOracle:
    """Callable(request body) -> Reply with the gold answer for the post the request is about."""

    def __init__(self, samples: Sequence[Sample], default_size: tuple[int, int] = (640, 480)):
        self.by_text = {normalise(s.text): s for s in samples}
        self.default_size = default_size
        self.unknown = 0

    def __call__(self, body: dict) -> Reply:
        text = request_text(body)
        marks = [text.rfind(m) for m in ("POST: ", "Post: ")]
        at = max(marks)
        sample = None
        if at >= 0:
            line = text[at + 6 :].split("\n", 1)[0]
            sample = self.by_text.get(normalise(line))
        if sample is None:
            self.unknown += 1
            return Reply('{"entities": []}')
        sent = _last_image_size(body)
        orig = sample.image_size or self.default_size
        sx, sy = (sent[0] / orig[0], sent[1] / orig[1]) if sent else (1.0, 1.0)
        entities = [
            {
                "text": e.text,
                "type": e.type,
                "boxes": [
                    [round(b.xmin * sx, 1), round(b.ymin * sy, 1), round(b.xmax * sx, 1), round(b.ymax * sy, 1)]
                    for b in e.boxes
                ],
            }
            for e in sample.entities
        ]
        return Reply(json.dumps({"reasoning": "gold", "entities": entities}))
