"""The grounding demonstrations: the labelled pool, indexed once (texts, entities and, with a CLIP model,
images embedded), and the K demos of each post with their images as the client sends them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, default_cache_dir
from ..data import load_samples, read_ids
from ..data.images import SentImage, find_image, image_folders, open_image
from ..types import Entity, Sample
from .select import DemoSelector, clip_embedder, sentence_embedder

KEEP_IMAGES = 256  # demo images kept prepared; a pool of thousands is never held in memory at once


@dataclass(frozen=True)
class DemoIndex:
    """The demo pool (labelled posts whose image was found), its selector and image paths: built once per run
    and shared (the Ray engine hands one to each of its actors)."""

    selector: DemoSelector | None
    paths: dict[str, Path]
    clip: str | None
    notes: tuple[str, ...]

    @classmethod
    def build(cls, cfg: RunConfig) -> DemoIndex:
        """Read ``[run] demos``, find the pool's images and embed its texts and entities (and images, with
        ``[run] clip``)."""
        run = cfg.run
        pool_all = load_samples(run.demos, read_ids(run.demo_ids) if run.demo_ids else None)
        folders = image_folders(run.images, run.demos)
        paths = {s.id: path for s in pool_all if (path := find_image(s.image, folders)) is not None}
        pool = [s for s in pool_all if s.id in paths]
        notes = [f"demo pool: {len(pool)} of {len(pool_all)} labelled samples have an image"]
        if not pool:
            return cls(None, paths, run.clip, tuple(notes))
        image_vecs = None
        if run.clip:
            image_vecs = clip_embedder(run.clip)([open_image(paths[s.id]) for s in pool])
        else:
            notes.append("no image embedder (--clip): the image term of demo selection was dropped")
        g = cfg.ground
        selector = DemoSelector.build(
            pool,
            sentence_embedder(),
            (cfg.llm.cache_dir or default_cache_dir()) / "embeddings",
            image_vecs=image_vecs,
            weights=g.weights,
            type_bonus=g.type_bonus,
            k=g.k,
        )
        return cls(selector, paths, run.clip, tuple(notes))


class Demos:
    """The K demonstrations of a post with their images as sent, from an index; safe to use from several threads
    (the embedders' tokenizers are not, so one post is served at a time)."""

    def __init__(self, index: DemoIndex, prepare: Callable[[Path], SentImage]):
        self.index, self.prepare = index, prepare
        self.embed = sentence_embedder() if index.selector is not None else None
        self.image_embed = clip_embedder(index.clip) if index.selector is not None and index.clip else None
        self._sent: OrderedDict[str, SentImage] = OrderedDict()
        self._lock = threading.Lock()

    def for_post(self, sample: Sample, entities: Sequence[Entity], image=None) -> tuple[tuple[Sample, SentImage], ...]:
        """The demos most like the post (never the post itself), each with its gold entities and sent image;
        ``image`` (a path or PIL image of the post) adds the image term when a CLIP model is set."""
        selector = self.index.selector
        if selector is None:
            return ()
        with self._lock:
            vec = None
            if self.image_embed is not None and image is not None:
                vec = self.image_embed([image if not isinstance(image, (str, Path)) else open_image(image)])[0]
            picked = selector.select(sample, entities, self.embed, vec)
            return tuple((selector.pool[i], self._image(selector.pool[i].id)) for i in picked)

    def _image(self, sid: str) -> SentImage:
        if sid in self._sent:
            self._sent.move_to_end(sid)
        else:
            self._sent[sid] = self.prepare(self.index.paths[sid])
            if len(self._sent) > KEEP_IMAGES:
                self._sent.popitem(last=False)
        return self._sent[sid]
