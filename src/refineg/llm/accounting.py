"""Per-stage counts of LLM work: calls, retries, tokens, cache hits, re-asks and fallbacks."""

from __future__ import annotations

from collections import Counter, defaultdict

COUNTERS = (
    "requests",
    "retries",
    "prompt_tokens",
    "completion_tokens",
    "cache_hits",
    "cache_misses",
    "reasks",
    "truncated",
    "empty",
    "fallbacks",
    "failures",
)


class Usage:
    """Counters kept per stage; fallbacks are also kept by reason, so none is silent."""

    def __init__(self) -> None:
        self.by_stage: dict[str, Counter] = defaultdict(Counter)
        self.fallback_reasons: dict[str, Counter] = defaultdict(Counter)

    def add(self, stage: str, **counts: int) -> None:
        """Add to the named counters of a stage."""
        self.by_stage[stage].update(counts)

    def fallback(self, stage: str, reason: str) -> None:
        """Count one fallback of a stage, with its reason."""
        self.by_stage[stage]["fallbacks"] += 1
        self.fallback_reasons[stage][reason] += 1

    def state(self) -> dict:
        """The raw counters, JSON-friendly: what another process adds with absorb()."""
        return {
            "by_stage": {k: dict(v) for k, v in self.by_stage.items()},
            "fallback_reasons": {k: dict(v) for k, v in self.fallback_reasons.items()},
        }

    def absorb(self, state: dict) -> None:
        """Add the counters of another Usage's state() (the Ray engine sums its actors' this way)."""
        for stage, counts in state["by_stage"].items():
            self.by_stage[stage].update(counts)
        for stage, counts in state["fallback_reasons"].items():
            self.fallback_reasons[stage].update(counts)

    def total(self, name: str) -> int:
        """One counter summed over all stages."""
        return sum(c[name] for c in self.by_stage.values())

    def summary(self, price_prompt_per_1k: float = 0.0, price_completion_per_1k: float = 0.0) -> dict:
        """A JSON-friendly summary with the cost at the given prices."""
        stages = {}
        for stage, c in sorted(self.by_stage.items()):
            row = {k: c[k] for k in COUNTERS}
            row["cost"] = round(
                c["prompt_tokens"] / 1000 * price_prompt_per_1k
                + c["completion_tokens"] / 1000 * price_completion_per_1k,
                6,
            )
            row["fallback_reasons"] = dict(self.fallback_reasons[stage])
            stages[stage] = row
        total = {k: self.total(k) for k in COUNTERS}
        total["cost"] = round(sum(s["cost"] for s in stages.values()), 6)
        return {"stages": stages, "total": total}
