"""CRF helpers on top of pytorch-crf: BIO transition constraints, forward-backward marginals and
the exact probability of a labelled span."""

from __future__ import annotations

import numpy as np
import torch
from torchcrf import CRF

FORBIDDEN = -10000.0


def bio_constraints(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (start (K,), transitions (K, K)) that are True where BIO forbids the move."""
    k = len(labels)
    start = torch.zeros(k, dtype=torch.bool)
    trans = torch.zeros(k, k, dtype=torch.bool)
    for j, to in enumerate(labels):
        if not to.startswith("I-"):
            continue
        start[j] = True
        for i, frm in enumerate(labels):
            trans[i, j] = frm[2:] != to[2:] or frm == "O"
    return start, trans


def enforce(crf: CRF, start_mask: torch.Tensor, trans_mask: torch.Tensor) -> None:
    """Pin forbidden transitions to a very low score (called after every optimiser step)."""
    with torch.no_grad():
        crf.start_transitions.masked_fill_(start_mask, FORBIDDEN)
        crf.transitions.masked_fill_(trans_mask, FORBIDDEN)


def forward_backward(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, beta, log Z) for batch-first emissions (B, T, K) under a prefix mask (B, T)."""
    b, t, k = emissions.shape
    trans = crf.transitions
    alphas = [crf.start_transitions + emissions[:, 0]]
    for i in range(1, t):
        nxt = torch.logsumexp(alphas[-1].unsqueeze(2) + trans.unsqueeze(0), dim=1) + emissions[:, i]
        alphas.append(torch.where(mask[:, i, None], nxt, alphas[-1]))
    log_z = torch.logsumexp(alphas[-1] + crf.end_transitions, dim=1)
    end = crf.end_transitions.expand(b, k)
    betas = [end]
    for i in range(t - 2, -1, -1):
        nxt = torch.logsumexp(trans.unsqueeze(0) + (emissions[:, i + 1] + betas[0]).unsqueeze(1), dim=2)
        betas.insert(0, torch.where(mask[:, i + 1, None], nxt, end))
    return torch.stack(alphas, 1), torch.stack(betas, 1), log_z


def marginals(alpha: torch.Tensor, beta: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
    """P(tag k at position t) for every position, (B, T, K)."""
    return torch.exp(alpha + beta - log_z[:, None, None])


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    return m + float(np.log(np.exp(x - m).sum()))


def span_probability(trans: np.ndarray, end_trans: np.ndarray, emissions: np.ndarray, alpha: np.ndarray,
                     beta: np.ndarray, log_z: float, length: int, start: int, end: int, b_tag: int, i_tag: int) -> float:
    """P(the tags on [start, end) are exactly B-X I-X ... and the next tag is not I-X), for one sequence.

    All arrays are that sequence's NumPy slices: emissions, alpha and beta are (T, K); length is
    its number of words.
    """
    score = alpha[start, b_tag]
    prev = b_tag
    for t in range(start + 1, end):
        score += trans[prev, i_tag] + emissions[t, i_tag]
        prev = i_tag
    if end < length:
        nxt = trans[prev] + emissions[end] + beta[end]
        tail = _logsumexp(np.delete(nxt, i_tag))
    else:
        tail = end_trans[prev]
    return float(min(1.0, max(0.0, np.exp(score + tail - log_z))))
