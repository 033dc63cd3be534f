"""CRF inference in NumPy, float64: Viterbi paths, forward-backward marginals and the exact probability of a
labelled span. Both runtimes (PyTorch and ONNX Runtime) decode here, so they differ only in emissions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class CRFParams:
    """A linear-chain CRF's scores: start (K,), end (K,) and transitions (K, K) from row tag to column tag."""

    start: np.ndarray
    end: np.ndarray
    trans: np.ndarray

    @classmethod
    def of(cls, crf) -> CRFParams:
        """The scores of a pytorch-crf module."""
        return cls(
            *(p.detach().double().cpu().numpy() for p in (crf.start_transitions, crf.end_transitions, crf.transitions))
        )

    def save(self, path: Path) -> None:
        """Write the scores as JSON (floats round-trip exactly)."""
        path.write_text(json.dumps({k: getattr(self, k).tolist() for k in ("start", "end", "trans")}))

    @classmethod
    def load(cls, path: Path, n_labels: int) -> CRFParams:
        """Scores saved by save(); ConfigError naming the file when it is damaged or of another tag set."""
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            params = cls(*(np.asarray(d[k], dtype=np.float64) for k in ("start", "end", "trans")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: missing or damaged: {str(exc).splitlines()[0]}") from None
        if (
            params.start.shape != (n_labels,)
            or params.end.shape != (n_labels,)
            or params.trans.shape != (n_labels,) * 2
        ):
            raise ConfigError(f"{path}: CRF scores for another tag set (expected {n_labels} tags)")
        return params


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def viterbi(crf: CRFParams, emissions: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    """The best tag path of each sequence (B, T, K) under a prefix mask (B, T), ties to the lower tag id
    (as pytorch-crf decodes)."""
    b, t, _ = emissions.shape
    score = crf.start + emissions[:, 0]
    history = []
    for i in range(1, t):
        nxt = score[:, :, None] + crf.trans[None] + emissions[:, i, None, :]
        history.append(nxt.argmax(axis=1))
        score = np.where(mask[:, i, None], nxt.max(axis=1), score)
    score = score + crf.end
    paths = []
    for k in range(b):
        best = [int(score[k].argmax())]
        for hist in reversed(history[: int(mask[k].sum()) - 1]):
            best.append(int(hist[k, best[-1]]))
        paths.append(best[::-1])
    return paths


@dataclass(frozen=True)
class Lattice:
    """One batch's forward-backward results, for per-tag marginals and per-entity probabilities."""

    crf: CRFParams
    emissions: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    log_z: np.ndarray
    marginals: np.ndarray  # P(tag k at position t), (B, T, K)

    @classmethod
    def of(cls, crf: CRFParams, emissions: np.ndarray, mask: np.ndarray) -> Lattice:
        """Forward-backward over emissions (B, T, K) under a prefix mask (B, T)."""
        em = emissions.astype(np.float64, copy=False)
        b, t, k = em.shape
        alphas = [crf.start + em[:, 0]]
        for i in range(1, t):
            nxt = _logsumexp(alphas[-1][:, :, None] + crf.trans[None], axis=1) + em[:, i]
            alphas.append(np.where(mask[:, i, None], nxt, alphas[-1]))
        log_z = _logsumexp(alphas[-1] + crf.end, axis=1)
        end = np.broadcast_to(crf.end, (b, k))
        betas = [end]
        for i in range(t - 2, -1, -1):
            nxt = _logsumexp(crf.trans[None] + (em[:, i + 1] + betas[0])[:, None, :], axis=2)
            betas.insert(0, np.where(mask[:, i + 1, None], nxt, end))
        alpha, beta = np.stack(alphas, 1), np.stack(betas, 1)
        return cls(crf, em, alpha, beta, log_z, np.exp(alpha + beta - log_z[:, None, None]))

    def span(self, b: int, n: int, start: int, end: int, b_tag: int, i_tag: int) -> float:
        """P(the tags of sequence b (n words) on [start, end) are exactly B-X I-X ... and the next is not I-X)."""
        trans, em, alpha, beta = self.crf.trans, self.emissions[b], self.alpha[b], self.beta[b]
        score = alpha[start, b_tag]
        prev = b_tag
        for t in range(start + 1, end):
            score += trans[prev, i_tag] + em[t, i_tag]
            prev = i_tag
        if end < n:
            nxt = trans[prev] + em[end] + beta[end]
            tail = float(_logsumexp(np.delete(nxt, i_tag), axis=0))
        else:
            tail = self.crf.end[prev]
        return float(min(1.0, max(0.0, np.exp(score + tail - self.log_z[b]))))
