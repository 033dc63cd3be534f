"""Stage 1a: synthesize training sentences from a few labelled ones (LLM), or offline by mention
replacement; every sentence is validated and every drop counted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import RunConfig
from ..llm.typesets import load_typeset
from ..types import Sample
from .replace import mention_replacement
from .task import build_request, parse
from .validate import Validator, excluded_texts


@dataclass(frozen=True)
class SynthResult:
    """Synthesized samples and the summary printed at the end of a run."""

    samples: list[Sample]
    summary: dict


def synthesize(
    seeds: Sequence[Sample],
    cfg: RunConfig,
    method: str | None = None,
    exclude: Sequence[Sample] = (),
    progress: bool = True,
) -> SynthResult:
    """New training sentences from seeds: by LLM when one is configured (or asked for), else mention replacement."""
    method = method or ("llm" if cfg.llm.configured else "mention-replacement")
    excluded = excluded_texts(exclude)
    if method == "mention-replacement":
        samples, summary = mention_replacement(seeds, cfg.synth.per_sample, cfg.synth.seed, excluded)
        note = (
            "no LLM configured: used offline mention replacement" if not cfg.llm.configured else "mention replacement"
        )
        return SynthResult(samples, {"method": method, "note": note, **summary})
    return _synthesize_llm(seeds, cfg, excluded, progress)


def llm_requests(seeds: Sequence[Sample], cfg: RunConfig) -> list:
    """Every request for a set of seeds: keep + new for seeds with entities, none for the others."""
    typeset = load_typeset(cfg.llm.types)
    reqs = []
    for s in seeds:
        kinds = (("keep", cfg.synth.n_keep), ("new", cfg.synth.n_new)) if s.entities else (("none", cfg.synth.n_none),)
        reqs.extend(build_request(s, kind, n, typeset) for kind, n in kinds if n)
    return reqs


def _synthesize_llm(seeds: Sequence[Sample], cfg: RunConfig, excluded: set[str], progress: bool) -> SynthResult:
    from ..llm import LLMClient

    typeset = load_typeset(cfg.llm.types)
    validator = Validator(typeset.names, cfg.synth.type_map, excluded)
    requests = llm_requests(seeds, cfg)
    out: list[Sample] = []
    with LLMClient(cfg.llm, show_progress=progress) as client:
        results = client.run(requests, parse, desc="synthesis")
        usage = client.summary()
    for req, res in zip(requests, results):
        seed_id, kind = req.key.rsplit(":", 1)
        for k, raw in enumerate(res.value or []):
            sample = validator.accept(raw, f"{seed_id}~{kind}{k}", seed_id)
            if sample is not None:
                out.append(sample)
    summary = {
        "method": "llm",
        "requests": len(requests),
        **validator.summary(),
        "failed_requests": sum(1 for r in results if not r.ok),
        "llm": usage["total"],
    }
    return SynthResult(out, summary)


__all__ = ["SynthResult", "synthesize", "llm_requests", "load_typeset", "Validator"]
