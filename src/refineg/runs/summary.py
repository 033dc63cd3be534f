"""A run's summary: what was done, what it cost and what to do next; written beside the output as
``OUT.summary.json``, earlier runs of the same output kept under ``history``, their sum under ``cumulative``."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig
from ..data.jsonl import summary_path
from ..data.textio import atomic_open
from ..ground.groundability import Groundability
from ..llm.accounting import Usage
from ..types import Prediction

log = logging.getLogger(__name__)
STAGES = ("combined", "refinement", "grounding")


@dataclass
class Tally:
    """What the gate decided over a run's posts, counted as they go by (the posts themselves are not kept)."""

    posts: int = 0
    entities: int = 0
    delegated: int = 0
    sent: int = 0

    def add(self, tagged: Prediction) -> None:
        """Count one post's gated prediction."""
        self.posts += 1
        self.entities += len(tagged.entities)
        self.delegated += sum(1 for e in tagged.entities if e.decision == "delegate")
        self.sent += tagged.delegated


@dataclass
class Work:
    """What one or more pipelines did: their counts, LLM usage and notes (the Ray engine adds up its actors')."""

    counts: Counter = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)
    notes: list[str] = field(default_factory=list)

    def add(self, report: dict) -> None:
        """Add a Pipeline.report()."""
        self.counts.update(report["counts"])
        if report.get("usage"):
            self.usage.absorb(report["usage"])
        self.notes = self.notes or list(report["notes"])


def run_summary(
    samples: int,
    resumed: int,
    tally: Tally,
    work: Work,
    seconds: dict,
    cfg: RunConfig,
    groundability: Groundability | None,
    engine: dict,
    setting: str | None,
) -> dict:
    """The summary of a run over ``samples`` posts, ``resumed`` of them done by earlier runs; ``setting`` is the
    model's training setting (None when no model tagged, as in `refineg ground`)."""
    counts, n = work.counts, max(1, tally.posts)
    summary = {
        "samples": samples,
        "resumed_done": resumed,
        "processed": tally.posts,
        "tagger_entities": tally.entities,
        "kept_entities": tally.entities - tally.delegated,
        "delegated_entities": tally.delegated,
        "samples_sent_to_refinement": tally.sent,
        "counts": dict(sorted(counts.items())),
        "llm_calls": {"attempted": counts["llm_calls"], "failed_transport": counts["llm_calls_failed"]},
        "calls_per_sample": {
            **{s: round(counts[f"calls_{s}"] / n, 4) for s in STAGES},
            "total": round(counts["llm_calls"] / n, 4),
        },
        "rows_marked_retry": counts["rows_marked_retry"],
        "llm": work.usage.summary(cfg.llm.price_prompt_per_1k, cfg.llm.price_completion_per_1k)
        if cfg.llm.configured
        else {},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "llm_configured": cfg.llm.configured,
        "notes": work.notes,
    }
    if setting is not None:
        summary["model_setting"] = setting
    summary["groundability"] = _groundability(groundability, cfg, counts)
    summary["engine"] = engine
    return summary


def _groundability(groundability: Groundability | None, cfg: RunConfig, counts: Counter) -> dict | None:
    if groundability is None:
        return None
    dev, kept = groundability.dev, groundability.dev_boxed
    recall = (
        sum(1 for p in kept if p >= groundability.threshold) / len(kept)
        if kept
        else dev.get("recall_of_boxed_entities")
    )
    return {
        "active": cfg.ground.skip_ungroundable,
        "threshold": round(groundability.threshold, 5),
        "target_recall": groundability.target_recall,
        "dev_auroc": dev.get("auroc"),
        "posts_skipped": counts["grounding_skipped_groundability"],
        "estimated_recall_lost": round(1 - recall, 4) if recall is not None else None,
    }


def write_summary(out: str | Path, summary: dict) -> Path:
    """Write a run's summary beside its output, keeping the earlier runs' under "history" and their sum under
    "cumulative"; its path."""
    path = summary_path(out)
    history = []
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            history = old.pop("history", []) + [{k: v for k, v in old.items() if k != "cumulative"}]
        except (json.JSONDecodeError, AttributeError):
            log.warning("%s: unreadable earlier summary, not kept", path)
    runs = history + [summary]
    cumulative = {
        "runs": len(runs),
        "processed": sum(r.get("processed", 0) for r in runs),
        "counts": dict(sum((Counter(r.get("counts", {})) for r in runs), Counter())),
        "llm_requests": sum(r.get("llm", {}).get("total", {}).get("requests", 0) for r in runs),
    }
    with atomic_open(path) as fh:
        json.dump({**summary, "history": history, "cumulative": cumulative}, fh, indent=1)
    return path
