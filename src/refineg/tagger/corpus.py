"""How the tagger labelled a corpus of unlabeled posts, as counts per entity text: how often it was tagged and
as which type, and how often the text occurs at all. A text the tagger labels the same way wherever it occurs
is more likely right: a signal for the gate's score model, which only a model self-trained on unlabeled posts
has (``train --unlabeled``). The counts are plain numbers in ``corpus.json``, never a pickled object."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..types import Prediction

CORPUS = "corpus.json"


def text_key(text: str) -> str:
    """How entity texts are compared (case and spacing ignored), here and in the training lexicon."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class CorpusCounts:
    """Per entity text: tagged mentions by type, and mentions of the text tagged or not, over ``posts`` posts."""

    posts: int
    tagged: dict[str, dict[str, int]]
    mentions: dict[str, int]

    @classmethod
    def of(cls, preds: Sequence[Prediction]) -> CorpusCounts:
        """The counts of the predictions' entities over the predictions' own tokens."""
        tagged: dict[str, Counter] = defaultdict(Counter)
        for p in preds:
            for e in p.entities:
                tagged[text_key(e.text)][e.type] += 1
        longest = max((len(k.split()) for k in tagged), default=0)
        mentions: Counter = Counter()
        for p in preds:
            words = [w.lower() for w in p.tokens or ()]
            for n in range(1, longest + 1):
                mentions.update(
                    k for k in (" ".join(words[i : i + n]) for i in range(len(words) - n + 1)) if k in tagged
                )
        return cls(
            len(preds),
            {k: dict(sorted(v.items())) for k, v in sorted(tagged.items())},
            {k: mentions[k] for k in sorted(tagged)},
        )

    def features(self, text: str, etype: str) -> tuple[float, float, float]:
        """(log(1 + times tagged), share of those with this type, share of its mentions tagged); zeros when the
        text was never tagged."""
        key = text_key(text)
        by_type = self.tagged.get(key)
        if not by_type:
            return 0.0, 0.0, 0.0
        total = sum(by_type.values())
        return math.log1p(total), by_type.get(etype, 0) / total, total / max(total, self.mentions.get(key, 0))

    def save(self, path: Path) -> None:
        """Write the counts as JSON."""
        path.write_text(
            json.dumps({"posts": self.posts, "tagged": self.tagged, "mentions": self.mentions}, ensure_ascii=False)
        )

    @classmethod
    def load(cls, path: Path) -> CorpusCounts:
        """The counts save() wrote; ConfigError naming the file when it is damaged."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            tagged = {str(k): {str(t): int(n) for t, n in v.items()} for k, v in raw["tagged"].items()}
            counts = cls(int(raw["posts"]), tagged, {str(k): int(n) for k, n in raw["mentions"].items()})
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{path}: damaged corpus counts ({type(exc).__name__}: {str(exc)[:200]})") from None
        return counts
