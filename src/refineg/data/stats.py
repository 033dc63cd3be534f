"""Dataset statistics: what ``refineg stats`` prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..types import Sample


def dataset_stats(samples: Sequence[Sample]) -> dict:
    """Samples, entities per type, groundable share, boxes per entity and image-size ranges."""
    ents = [e for s in samples for e in s.entities]
    per_type = Counter(e.type for e in ents)
    grounded = Counter(e.type for e in ents if e.boxes)
    boxes_per = Counter(len(e.boxes) for e in ents if e.boxes)
    sizes = [s.image_size for s in samples if s.image_size and s.image_size[0] > 0]
    return {
        "samples": len(samples),
        "samples_without_entities": sum(1 for s in samples if not s.entities),
        "tokens": sum(len(s.tokens) for s in samples),
        "entities": len(ents),
        "entities_per_type": dict(sorted(per_type.items())),
        "groundable_entities": sum(grounded.values()),
        "groundable_share": sum(grounded.values()) / len(ents) if ents else 0.0,
        "groundable_share_per_type": {t: grounded[t] / n for t, n in sorted(per_type.items())},
        "boxes": sum(len(e.boxes) for e in ents),
        "boxes_per_groundable_entity": dict(sorted(boxes_per.items())),
        "images_with_size": len(sizes),
        "image_width_range": [min(w for w, _ in sizes), max(w for w, _ in sizes)] if sizes else None,
        "image_height_range": [min(h for _, h in sizes), max(h for _, h in sizes)] if sizes else None,
    }
