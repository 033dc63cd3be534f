"""CRF helpers for training on top of pytorch-crf: the BIO transition constraints (inference is in lattice.py)."""

from __future__ import annotations

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
