"""The HTML report: one self-contained static page (inline data, images and charts, no fetches)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from ..data.images import find_image, prepare_image
from ..data.jsonl import summary_path
from ..errors import DataError
from ..eval.metrics import MODES, matching, score
from ..eval.protocols import Protocol
from ..eval.protocols import protocol as get_protocol
from ..types import Entity, Prediction, Sample
from .charts import reliability_svg, risk_coverage_svg

TEMPLATE = Path(__file__).parent / "template.html"
RENDER_JS = Path(__file__).parent / "render.js"
RENDER_CSS = Path(__file__).parent / "render.css"


def with_renderer(page: str) -> str:
    """A page with the shared sample renderer's script and style filled in (the report and the service page)."""
    return page.replace("__RENDER_CSS__", RENDER_CSS.read_text(encoding="utf-8")).replace(
        "__RENDER_JS__", RENDER_JS.read_text(encoding="utf-8")
    )


PALETTE = ["#d7263d", "#1b65b0", "#2e933c", "#f08a24", "#8e44ad", "#16a2a6", "#b5651d", "#e84393", "#7f8c8d"]
THUMB_SIDE = 480


def type_colors(types: Sequence[str]) -> dict[str, str]:
    """A stable colour for each type."""
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(sorted(types))}


def _ent(e: Entity, wrong: str) -> dict:
    return {
        "start": e.start,
        "end": e.end,
        "text": e.text,
        "type": e.type,
        "score": e.score,
        "source": e.source,
        "decision": e.decision,
        "boxes": [b.as_list() for b in e.boxes],
        "wrong": wrong,
    }


def _image(sample: Sample, folders: list[Path]) -> tuple[str | None, int, int]:
    path = find_image(sample.image, folders)
    if path is None:
        return None, 0, 0
    try:
        sent = prepare_image(path, max_side=THUMB_SIDE)
    except DataError:
        return None, 0, 0
    return sent.data_url, *sent.original_size


def _sample_view(
    pred: Prediction, gold: Sample | None, tokens: tuple[str, ...], folders: list[Path], boxes_predicted: bool
) -> dict:
    gold_ents = gold.entities if gold else ()
    box_miss = "wrong box" if boxes_predicted else "no box predicted"
    pairs = matching(pred.entities, gold_ents, "gmner")
    hit = {p for p, _ in pairs} if gold else set(range(len(pred.entities)))
    text_pairs = matching(pred.entities, gold_ents, "mner") if gold else []
    text_hit = {p for p, _ in text_pairs} if gold else hit
    text_found = {g for _, g in text_pairs} if not boxes_predicted else set()
    found = {g for _, g in pairs}
    image, w, h = _image(gold or Sample(pred.id, tokens, image=pred.image), folders)
    return {
        "id": pred.id,
        "tokens": list(tokens),
        "image": image,
        "width": w,
        "height": h,
        "pred": [
            _ent(e, "" if i in hit else box_miss if i in text_hit else "wrong") for i, e in enumerate(pred.entities)
        ],
        "gold": [_ent(e, "") for e in gold_ents],
        "missed": [
            {"text": e.text, "type": e.type, "found": i in text_found}
            for i, e in enumerate(gold_ents)
            if i not in found
        ],
        "delegated": pred.delegated or any(e.decision == "delegate" or e.source == "mllm" for e in pred.entities),
        "error": bool(gold) and (len(hit) < len(pred.entities) or len(found) < len(gold_ents)),
    }


def _metrics_html(gold: Sequence[Sample], preds: Sequence[Prediction], protocol: Protocol) -> str:
    """The figures table, headed by the protocol that made them (per type under hindex only)."""
    s = score(gold, preds)
    overall = s.overall if protocol.name == "hindex" else protocol.scores(gold, preds)
    rows = [(m.upper(), overall[m]) for m in MODES]
    if protocol.name == "hindex":
        rows += [(f"{t} (GMNER)", by["gmner"]) for t, by in s.per_type.items()]
        rows += [(f"{t} (MNER)", by["mner"]) for t, by in s.per_type.items()]
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{p.precision:.4f}</td><td>{p.recall:.4f}</td><td>{p.f1:.4f}</td>"
        f"<td>{p.tp}</td><td>{p.n_pred}</td><td>{p.n_gold}</td></tr>"
        for name, p in rows
    )
    return (
        f'<p class="note" id="protocol">Figures by the {html.escape(protocol.name)} protocol: '
        f"{html.escape(protocol.source)}.</p>"
        '<table class="metrics" id="metrics"><tr><th></th><th>precision</th><th>recall</th><th>F1</th><th>tp</th>'
        f"<th>pred</th><th>gold</th></tr>{body}</table>"
    )


def predictions_summary(pred: str | Path) -> dict:
    """The summary `refineg predict` or `run` wrote beside a predictions file ({} when there is none)."""
    try:
        summary = json.loads(summary_path(pred).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def predictions_setting(pred: str | Path) -> str | None:
    """The model setting that `refineg predict` or `run` recorded beside a predictions file, if any."""
    setting = predictions_summary(pred).get("model_setting")
    return setting if isinstance(setting, str) else None


def boxes_note(preds: Sequence[Prediction], summary: dict) -> str | None:
    """What the page must say when no prediction has a box: that boxes were not predicted, and why."""
    if any(e.boxes for p in preds for e in p.entities):
        return None
    if summary.get("llm_configured") is False:
        why = "no MLLM was configured for this run (`refineg run` without --llm-base-url or --llm-gguf)"
    elif "llm_configured" not in summary and "decisions" in summary:
        why = "these are `refineg predict` predictions: the tagger and gate alone, no MLLM"
    else:
        why = "the MLLM placed none (or these predictions come from elsewhere)"
    return (
        f"No box was predicted: {why}. GMNER and EEG therefore count only entities whose gold has no box; an "
        'entity right in span and type whose gold has a box is marked "no box predicted".'
    )


def build_report(
    preds: Sequence[Prediction],
    gold: Sequence[Sample] | None,
    out_dir: str | Path,
    images: Sequence[Path] = (),
    title: str = "",
    setting: str | None = None,
    notes: Sequence[str] = (),
    protocol: str = "hindex",
) -> Path:
    """Write out_dir/index.html and return its path; ``setting`` (the model's training setting) heads the figures,
    ``notes`` are said on the page above them (see boxes_note), ``protocol`` names the scoring protocol."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {g.id: g for g in gold or ()}
    boxed = any(e.boxes for p in preds for e in p.entities)
    views, scores, correct = [], [], []
    for p in preds:
        g = by_id.get(p.id)
        tokens = g.tokens if g else (p.tokens or tuple(e.text for e in p.entities))
        view = _sample_view(p, g, tokens, list(images), boxed)
        views.append(view)
        if g is not None:
            ok = {i for i, _ in matching(p.entities, g.entities, "mner")}
            for i, e in enumerate(p.entities):
                scores.append(e.score if e.score is not None else 1.0)
                correct.append(i in ok)
    types = sorted({e["type"] for v in views for e in v["pred"] + v["gold"]})
    colors = type_colors(types)
    ents = [e for p in preds for e in p.entities]
    kept = sum(1 for e in ents if e.decision != "delegate") / len(ents) if ents else None
    charts = (
        (reliability_svg(scores, correct) + risk_coverage_svg(scores, correct, kept))
        if gold
        else '<p class="note">No gold data given: no metrics or charts.</p>'
    )
    page = with_renderer(TEMPLATE.read_text(encoding="utf-8"))
    data = json.dumps({"samples": views, "colors": colors}, ensure_ascii=False).replace("</", "<\\/")
    legend = " ".join(f'<span><b style="color:{c}">&#9632;</b> {html.escape(t)}</span>' for t, c in colors.items())
    subtitle = (title or f"{len(preds)} samples") + (f" · model: {setting}" if setting else "")
    notes_html = "".join(f'<p class="note page-note">{html.escape(n)}</p>' for n in notes)
    page = (
        page.replace("__SUBTITLE__", html.escape(subtitle))
        .replace("__NOTES__", notes_html)
        .replace("__METRICS__", _metrics_html(gold, preds, get_protocol(protocol)) if gold else "")
        .replace("__CHARTS__", charts)
        .replace("__LEGEND__", legend)
        .replace(
            "__TYPE_OPTIONS__", "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in types)
        )
        .replace("__DATA__", data)
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
