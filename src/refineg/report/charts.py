"""Inline SVG charts: a reliability diagram of entity scores and the gate's risk-coverage curve."""

from __future__ import annotations

from collections.abc import Sequence

W, H, PAD = 320, 240, 36


def _frame(title: str, xlabel: str, ylabel: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{title}">',
        f'<text x="{W / 2}" y="14" text-anchor="middle" font-size="12" font-weight="bold">{title}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#333"/>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{PAD}" y2="24" stroke="#333"/>',
        f'<text x="{(W + PAD) / 2}" y="{H - 6}" text-anchor="middle" font-size="11">{xlabel}</text>',
        f'<text x="12" y="{(H - PAD + 24) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {(H - PAD + 24) / 2})">{ylabel}</text>',
        f'<text x="{PAD}" y="{H - PAD + 14}" font-size="9" text-anchor="middle">0</text>',
        f'<text x="{W - 10}" y="{H - PAD + 14}" font-size="9" text-anchor="middle">1</text>',
        f'<text x="{PAD - 4}" y="28" font-size="9" text-anchor="end">1</text>',
    ]


def _xy(x: float, y: float) -> tuple[float, float]:
    return PAD + x * (W - 10 - PAD), (H - PAD) - y * (H - PAD - 24)


def reliability_svg(scores: Sequence[float], correct: Sequence[bool], bins: int = 10) -> str:
    """Bars of observed accuracy per score bin, against the diagonal of perfect calibration."""
    parts = _frame("Reliability of entity scores", "score", "share correct")
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#999" stroke-dasharray="4 3"/>')
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, s in enumerate(scores) if lo <= s < hi or (b == bins - 1 and s == 1.0)]
        if not idx:
            continue
        acc = sum(correct[i] for i in idx) / len(idx)
        bx, by = _xy(lo, acc)
        bw = _xy(hi, 0)[0] - bx - 2
        parts.append(
            f'<rect class="bar" x="{bx + 1:.1f}" y="{by:.1f}" width="{bw:.1f}" height="{y0 - by:.1f}" '
            f'fill="#4a78c2" opacity="0.8"><title>{lo:.1f}-{hi:.1f}: {acc:.2f} correct of {len(idx)}</title></rect>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def risk_coverage_svg(scores: Sequence[float], correct: Sequence[bool], kept_share: float | None = None) -> str:
    """Error rate among the entities kept, as the least confident are delegated one by one."""
    parts = _frame("Gate: risk vs coverage", "coverage (share kept)", "error rate of kept")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    points, wrong = [], 0
    for k, i in enumerate(order, 1):
        wrong += not correct[i]
        points.append(_xy(k / len(order), wrong / k))
    if points:
        parts.append(
            '<polyline fill="none" stroke="#c2364a" stroke-width="2" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            + '"/>'
        )
    if kept_share is not None and points:
        x, _ = _xy(kept_share, 0)
        anchor, dx = ("end", -3) if kept_share > 0.6 else ("start", 3)
        parts.append(
            f'<line x1="{x:.1f}" y1="{H - PAD}" x2="{x:.1f}" y2="24" stroke="#333" stroke-dasharray="3 3"/>'
            f'<text x="{x + dx:.1f}" y="36" font-size="10" text-anchor="{anchor}">gate keeps {kept_share:.0%}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
