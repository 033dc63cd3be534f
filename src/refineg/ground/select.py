"""Demo selection: the K labelled examples most similar to a query, by text, image and entities.

Each similarity is min-max normalised over the pool; the score is their weighted sum (defaults
0.4 text, 0.2 image, 0.6 entity; type-match bonus 0.8; K = 3). Without an image embedder the
image term is dropped. A sample never retrieves itself.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.textio import atomic_open
from ..types import Entity, Sample

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], np.ndarray]


def minmax(x: np.ndarray) -> np.ndarray:
    """x scaled to [0, 1] (all zeros when constant)."""
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=2)  # the demo pool and the queries share one loaded model
def sentence_embedder(model: str | None = None) -> Embed:
    """A sentence-transformers embedder (default: the packaged all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    from ..tagger.encoder import default_encoder

    st = SentenceTransformer(model or default_encoder(), device="cpu")
    return lambda texts: st.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)


def cached_embeddings(embed: Embed, texts: list[str], cache_dir: Path | None, tag: str) -> np.ndarray:
    """Embeddings of texts, stored on disk under a hash of the texts and the embedder tag."""
    if cache_dir is None:
        return embed(texts)
    key = hashlib.sha256((tag + "\x00" + "\x00".join(texts)).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"emb-{key}.npy"
    if path.is_file():
        try:
            vecs = np.load(path)
            if vecs.shape[0] == len(texts):
                return vecs
        except (OSError, ValueError) as exc:
            log.warning("%s: damaged embedding cache (%s), computed again", path, exc)
    vecs = embed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        np.save(fh, vecs)
    return vecs


@dataclass
class DemoSelector:
    """Scores a query against the pool of labelled samples and returns the top K."""

    pool: Sequence[Sample]
    text_vecs: np.ndarray
    entity_vecs: np.ndarray
    entity_owner: np.ndarray
    entity_types: list[str]
    image_vecs: np.ndarray | None = None
    weights: tuple[float, float, float] = (0.4, 0.2, 0.6)
    type_bonus: float = 0.8
    k: int = 3

    @classmethod
    def build(
        cls,
        pool: Sequence[Sample],
        embed: Embed,
        cache_dir: Path | None = None,
        tag: str = "minilm",
        image_vecs: np.ndarray | None = None,
        **kw,
    ) -> DemoSelector:
        """Embed the pool's texts and entity names (cached on disk)."""
        texts = [s.text for s in pool]
        names = [e.text for s in pool for e in s.entities]
        owner = np.asarray([i for i, s in enumerate(pool) for _ in s.entities], dtype=np.int64)
        types = [e.type for s in pool for e in s.entities]
        return cls(
            pool,
            cached_embeddings(embed, texts, cache_dir, tag + ":text"),
            cached_embeddings(embed, names, cache_dir, tag + ":entity"),
            owner,
            types,
            image_vecs,
            **kw,
        )

    def entity_similarity(self, names: np.ndarray, types: list[str]) -> np.ndarray:
        """Per pool sample: sum over entity pairs of name cosine plus the bonus when types match."""
        sim = np.zeros(len(self.pool))
        if not len(names) or not len(self.entity_owner):
            return sim
        cos = _unit(names) @ _unit(self.entity_vecs).T  # (query entities, pool entities)
        bonus = np.asarray([[self.type_bonus if t == u else 0.0 for u in self.entity_types] for t in types])
        np.add.at(sim, self.entity_owner, (cos + bonus).sum(0))
        return sim

    def scores(
        self,
        text_vec: np.ndarray,
        entity_vecs: np.ndarray,
        entity_types: list[str],
        image_vec: np.ndarray | None = None,
    ) -> np.ndarray:
        """The combined score of every pool sample for one query."""
        w_text, w_img, w_ent = self.weights
        total = w_text * minmax(_unit(self.text_vecs) @ _unit(text_vec))
        total = total + w_ent * minmax(self.entity_similarity(entity_vecs, entity_types))
        if image_vec is not None and self.image_vecs is not None:
            total = total + w_img * minmax(_unit(self.image_vecs) @ _unit(image_vec))
        return total

    def select(
        self, query: Sample, entities: Sequence[Entity], embed: Embed, image_vec: np.ndarray | None = None
    ) -> list[int]:
        """Indices of the top-K pool samples for a query (never the query itself)."""
        vecs = embed([query.text] + [e.text for e in entities])
        s = self.scores(vecs[0], vecs[1:], [e.type for e in entities], image_vec)
        for i, demo in enumerate(self.pool):
            if demo.id == query.id:
                s[i] = -np.inf
        order = np.argsort(-s, kind="mergesort")
        return [int(i) for i in order[: self.k] if np.isfinite(s[i])]


@functools.lru_cache(maxsize=2)
def clip_embedder(name_or_path: str) -> Callable[[list], np.ndarray]:
    """An image embedder from a CLIP model loaded through transformers (by name or path)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from ..errors import ConfigError
    from ..tagger.encoder import check_model_source

    check_model_source(name_or_path, "CLIP model")
    try:
        model = CLIPModel.from_pretrained(name_or_path).eval()
        processor = CLIPProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load CLIP model {name_or_path!r}: {str(exc).splitlines()[0]}") from None

    @torch.no_grad()
    def embed(images: list) -> np.ndarray:
        out = []
        for k in range(0, len(images), 32):
            batch = processor(images=images[k : k + 32], return_tensors="pt")
            out.append(model.get_image_features(**batch).numpy())
        return np.concatenate(out) if out else np.zeros((0, model.config.projection_dim))

    return embed
