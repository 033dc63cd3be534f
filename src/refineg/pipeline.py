"""The pipeline: its stages composed from one config. ``refineg run``, ``predict``, ``ground``, the Python API,
the service and the Ray engine's actors all go through it.

    tagging (GatedTagger)  ->  refinement (Refiner) | refinement and grounding in one call (RefineAndGround)
                           ->  grounding (Grounder), shown demonstrations (Demos)

A post the gate delegated gets one combined call when it has an image (two calls with ``[ground] combined =
false``), a refinement call when it has none; a post the gate kept is grounded unless the groundability model
says none of its entities is in the image. ``nlp(text)`` and ``nlp.pipe(items)`` give predictions;
``nlp.stream(samples)`` gives them as they finish, tagging later posts while earlier ones wait on the MLLM,
with at most ``[run] window`` posts under way.
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import RunConfig, load_config
from .data.images import SentImage, find_image, open_image, safe_name
from .data.tokenize import tokenize
from .errors import DataError
from .gate import GatedTagger, model_types
from .ground import Grounder
from .ground.combined import RefineAndGround
from .ground.demos import DemoIndex, Demos
from .ground.groundability import Groundability
from .llm.client import LLMClient
from .llm.stage import LLMStage, Post
from .llm.typesets import load_typeset
from .refine import Refiner
from .tagger.tagger import read_setting
from .types import Prediction, Sample

log = logging.getLogger(__name__)

RETRY = "retry"  # the status of a row whose MLLM work did not happen; a rerun re-does it
NO_LLM_NOTE = (
    "no LLM configured: refinement and grounding were skipped; the gate kept every entity and every "
    "entity has an empty box list; rows with entities are marked for a retry, which a rerun with an "
    "LLM does"
)


class Counts(Counter):
    """A Counter whose update() is atomic: posts finish on several threads at once."""

    _lock = threading.RLock()

    def update(self, *args, **kw) -> None:
        with self._lock:
            super().update(*args, **kw)


@dataclass(frozen=True)
class Finished:
    """A post through the pipeline: its position in the input, the sample, the tagger's gated prediction and
    the final one."""

    index: int
    sample: Sample
    tagged: Prediction
    prediction: Prediction


@dataclass
class _LLMParts:
    """What the MLLM stages need, opened together on first use."""

    client: LLMClient
    refiner: Refiner
    grounder: Grounder
    combined: RefineAndGround
    demos: Demos | None


class Pipeline:
    """A model's tagger and gate and, with an LLM, the client, the MLLM stages and the demonstrations.

    Without a model folder it grounds the entities its posts already have (``refineg ground``); with
    ``tagger=False`` it refines and grounds predictions tagged elsewhere (the Ray engine's LLM actors). Safe to
    use from several threads: the service does.
    """

    def __init__(
        self,
        model_dir: str | Path | None,
        cfg: RunConfig | None = None,
        demos: DemoIndex | None = None,
        tagger: bool = True,
    ):
        self.cfg = cfg if cfg is not None else load_config()
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.typeset = load_typeset(self.cfg.llm.types)
        self.refines = self.model_dir is not None  # a model's delegated entities are refined; given ones are not
        self.tagging: GatedTagger | None = None
        if self.model_dir is not None:
            if tagger:
                self.tagging = GatedTagger.load(self.model_dir, self.cfg, self.cfg.llm.configured)
            self.types = model_types(self.model_dir)
            self.setting: str | None = read_setting(self.model_dir)
            found = Groundability.load(self.model_dir)
            self.groundability = found.at_recall(self.cfg.ground.groundability_recall) if found else None
        else:
            self.types, self.setting, self.groundability = self.typeset.names, None, None
        self.counts = Counts()
        self.notes: list[str] = [] if self.cfg.llm.configured else [NO_LLM_NOTE]
        self._demo_index = demos
        self._llm: _LLMParts | None = None
        self._inline: dict[str, Any] = {}  # images handed over in memory (the Python API, the service)
        self._lock = threading.Lock()
        self._next_id = 0

    # ---- the stages -----------------------------------------------------------------------------

    @property
    def llm(self) -> _LLMParts | None:
        """The client, the MLLM stages and the demos, opened on first use (None without an LLM)."""
        if not self.cfg.llm.configured:
            return None
        with self._lock:
            if self._llm is None:
                self._llm = self._open_llm()
        return self._llm

    def _open_llm(self) -> _LLMParts:
        client = LLMClient(self.cfg.llm, show_progress=False)
        family = client.dialect.family
        self.notes.append(client.dialect.note)
        demos = None
        if self.cfg.run.demos is None:
            self.notes.append("no --demos: grounding ran zero-shot, without demonstrations")
        else:
            index = self._demo_index or DemoIndex.build(self.cfg)
            self.notes.extend(index.notes)
            demos = Demos(index, client.image)
        return _LLMParts(
            client,
            Refiner(self.typeset, self.types),
            Grounder(self.typeset, family),
            RefineAndGround(self.typeset, self.types, family),
            demos,
        )

    def warm(self) -> None:
        """Load what the first call would (the LLM client and its connections, the demo index, the tagger's
        runtime) now."""
        if self.llm is not None:
            self.llm.client.start()
        self.tag([Sample("warm-up", ("warm", "up"))])

    def tag(self, samples: Sequence[Sample], mc_samples: int = 0, progress: bool = False) -> list[Prediction]:
        """Tagger and gate: every entity with a score and a keep/delegate decision. Without a model, the posts'
        own entities, to be grounded (their boxes dropped)."""
        if self.tagging is not None:
            return self.tagging(samples, mc_samples, progress)
        if self.refines:
            raise RuntimeError("this pipeline was opened without its tagger (tagger=False): give it tagged predictions")
        return [
            Prediction(s.id, tuple(e.with_(boxes=(), decision="keep") for e in s.entities), s.tokens, s.image)
            for s in samples
        ]

    # ---- one post through the MLLM stages -----------------------------------------------------------

    async def finish(self, sample: Sample, pred: Prediction) -> Prediction:
        """The MLLM stages for one tagged post (run on the client's event loop); a row whose MLLM work failed
        is marked for a retry. Without an LLM the prediction is returned as it is."""
        parts = self.llm
        if parts is None:
            return pred
        post = Post(sample, pred, await asyncio.to_thread(self.sent_image, sample))
        failed: set[str] = set()
        delegated = self.refines and pred.delegated
        combined = delegated and post.image is not None and self.cfg.ground.combined
        if combined:
            post = await self._ask(parts.combined, await self._with_demos(post), failed)
        elif delegated:
            post = await self._ask(parts.refiner, post, failed)
        if not combined and post.prediction.entities:
            if post.image is None:
                self.counts.update({"grounding_skipped_no_image": 1})
            elif not delegated and self._ungroundable(post.prediction):
                self.counts.update({"grounding_skipped_groundability": 1})
                p = post.prediction
                post = replace(
                    post,
                    prediction=p.with_(meta={**p.meta, "grounding": "decided locally: no entity likely in the image"}),
                )
            else:
                post = await self._ask(parts.grounder, await self._with_demos(post), failed)
        return self.mark(post.prediction, *sorted(failed)) if failed else post.prediction

    async def _ask(self, stage: LLMStage, post: Post, failed: set[str]) -> Post:
        """The post after one stage's call; a failed call is a counted fallback that keeps the post as it was."""
        request = await asyncio.to_thread(stage.request, post)
        result = await self.llm.client.complete(request, lambda text: stage.parse(post, text))
        self.counts.update({"llm_calls": 1, f"calls_{stage.name}": 1})
        if not result.ok:
            self.counts.update({f"{stage.name}_fallback_{result.reason}": 1})
            if result.reason == "transport":  # the endpoint, not the model, failed: worth doing again
                self.counts.update({"llm_calls_failed": 1})
                refusal = getattr(result.exception, "refusal", None)
                failed.add(f"{stage.name} refused ({refusal})" if refusal else f"{stage.name} {result.reason}")
                if refusal:
                    self._refused(stage.name, refusal, result.exception.hint)
            return post
        outcome = stage.apply(post, result.value)
        self.counts.update({f"{stage.name}_{k}": v for k, v in outcome.counts.items()})
        return replace(post, prediction=outcome.prediction)

    def _refused(self, stage: str, refusal: str, hint: str | None) -> None:
        """Count a refusal by the endpoint, and say once what fixes it (asking again cannot)."""
        self.counts.update({f"llm_refused_{refusal}": 1})
        note = (
            f"the endpoint refused {stage} requests ({refusal})"
            + (f": {hint}" if hint else "")
            + "; a rerun redoes the marked rows once that is fixed"
        )
        with self._lock:
            if note not in self.notes:
                self.notes.append(note)

    async def _with_demos(self, post: Post) -> Post:
        demos = self.llm.demos
        if demos is None:
            return post
        picked = await asyncio.to_thread(
            demos.for_post, post.sample, post.prediction.entities, self._image_source(post.sample)
        )
        return replace(post, demos=picked)

    def _ungroundable(self, pred: Prediction) -> bool:
        g = self.groundability
        return (
            g is not None
            and self.cfg.ground.skip_ungroundable
            and not g.needs_grounding(pred.tokens or (), pred.entities)
        )

    def mark(self, pred: Prediction, *reasons: str) -> Prediction:
        """The prediction marked for a retry (a rerun of the same command re-does it), counted."""
        self.counts.update({"rows_marked_retry": 1})
        return marked(pred, *reasons)

    # ---- images ------------------------------------------------------------------------------------

    def sent_image(self, sample: Sample) -> SentImage | None:
        """The post's image as the MLLM gets it; None (counted, with a warning) when it is missing or unreadable,
        unless ``[run] strict``, where that is an error. A post that names no image has none, silently."""
        try:
            source = self._image_source(sample, strict=True)
            return self.llm.client.image(source) if source is not None else None
        except DataError as exc:
            if self.cfg.run.strict:
                raise
            self.counts.update({"missing_or_corrupt_image": 1})
            log.warning("%s: processed from text alone: %s", sample.id, exc)
            return None

    def _image_source(self, sample: Sample, strict: bool = False):
        """A path or PIL image for the post (None: it names none). Names resolve only inside the image folders;
        with ``strict``, a name that is not found, or would reach outside them, is a DataError."""
        if not sample.image:
            return None
        if sample.image in self._inline:
            return _decoded(self._inline[sample.image])
        if not safe_name(sample.image):
            self.counts.update({"image_name_refused": 1})
            if strict:
                raise DataError(
                    f"image name {sample.image!r} refused: names must stay inside the image folders "
                    "(no absolute path, no '..')",
                    sample=sample.id,
                )
            return None
        path = find_image(sample.image, self.cfg.run.images)
        if path is None and strict:
            where = ", ".join(map(str, self.cfg.run.images)) or "no folder (give --images)"
            raise DataError(f"image {sample.image!r} not found in {where}", sample=sample.id)
        return path

    # ---- many posts ------------------------------------------------------------------------------

    def process(self, samples: Sequence[Sample], preds: Sequence[Prediction] | None = None) -> list[Prediction]:
        """Predictions for samples, in order (given predictions skip the tagger); their MLLM calls run concurrently."""
        samples = list(samples)
        preds = list(preds) if preds is not None else self.tag(samples)
        parts = self.llm
        if parts is None or not samples:
            return preds

        async def all_posts():
            return await asyncio.gather(*(self.finish(s, p) for s, p in zip(samples, preds)))

        return list(parts.client.submit(all_posts()).result())

    def stream(
        self, samples: Iterable[Sample], ordered: bool = False, tag_batch: int | None = None
    ) -> Iterator[Finished]:
        """Every post through the pipeline, as it finishes (in input order with ``ordered``). Posts are tagged in
        batches (``[run] tag_batch``) on a thread of their own while earlier posts wait on the MLLM; at most
        ``[run] window`` posts are under way at once, so memory is bounded by the window, not by the input."""
        run = self.cfg.run
        flow = _Flow(self, samples, run.window_for(self.cfg.llm.concurrency), tag_batch or run.tag_batch, ordered)
        try:
            yield from flow
        finally:
            flow.stop()

    # ---- the Python API ----------------------------------------------------------------------------

    def __call__(
        self, text: str | None = None, *, tokens: Sequence[str] | None = None, image=None, id: str | None = None
    ) -> Prediction:
        """The prediction for one post (raw text is tokenised the Twitter-GMNER way)."""
        sample = self.sample(text, tokens=tokens, image=image, id=id)
        try:
            return self.process([sample])[0]
        finally:
            self.forget_image(sample)

    def pipe(self, items: Iterable, batch_size: int | None = None) -> Iterator[Prediction]:
        """Predictions for items (str, dict with text/tokens/image/id, or Sample), in input order; tagging of
        later items overlaps the MLLM calls of earlier ones. ``batch_size`` sets how many are tagged together."""
        samples = (
            self.sample(**i) if isinstance(i, dict) else i if isinstance(i, Sample) else self.sample(i) for i in items
        )
        for done in self.stream(samples, ordered=True, tag_batch=batch_size):
            self.forget_image(done.sample)
            yield done.prediction

    def sample(
        self, text: str | None = None, *, tokens: Sequence[str] | None = None, image=None, id: str | None = None
    ) -> Sample:
        """A Sample from raw text or tokens and an optional image (a path, a PIL image or encoded bytes); a
        DataError says what is wrong with the input."""
        if (text is None) == (tokens is None):
            raise DataError("give the post as text or as tokens (one of them)", sample=id)
        if text is not None and not isinstance(text, str):
            raise DataError(f"text must be a string, not {type(text).__name__}", sample=id)
        if tokens is not None and (isinstance(tokens, (str, bytes)) or not all(isinstance(t, str) for t in tokens)):
            raise DataError("tokens must be a list of strings (for a raw string, use text=...)", sample=id)
        toks = tuple(tokens) if tokens is not None else tuple(tokenize(text))
        if not toks:
            raise DataError("the post is empty", sample=id)
        with self._lock:
            self._next_id += 1
            sid = str(id) if id is not None else f"post-{self._next_id}"
            name = f"inline:{sid}:{self._next_id}" if image is not None else None
        if image is not None:
            self._inline[name] = _checked_image(image, sid)
        return Sample(sid, toks, image=name, raw_text=text)

    def forget_image(self, sample: Sample) -> None:
        """Drop an in-memory image once its sample is done."""
        if sample.image:
            self._inline.pop(sample.image, None)

    def report(self) -> dict:
        """What this pipeline did so far: counts, LLM usage (raw counters), notes and seconds spent tagging."""
        llm = self._llm
        return {
            "counts": dict(self.counts),
            "usage": llm.client.usage.state() if llm else None,
            "notes": list(self.notes),
            "tag_seconds": self.tagging.seconds if self.tagging else 0.0,
        }

    def close(self) -> None:
        """Stop the LLM client (and an embedded server)."""
        if self._llm is not None:
            self._llm.client.close()
            self._llm = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_END = object()
FIRST_BATCH = 4


class _Flow:
    """The streaming engine behind Pipeline.stream: a producer thread tags batches and starts each post's
    MLLM work on the client's loop; finished posts come back through a queue. A slot of the window is taken
    when a post is started and given back when it is handed out."""

    def __init__(self, nlp: Pipeline, samples: Iterable[Sample], window: int, tag_batch: int, ordered: bool):
        self.nlp, self.tag_batch, self.ordered = nlp, tag_batch, ordered
        self.slots = threading.Semaphore(window)
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.halt = threading.Event()
        self.started = 0
        self.futures: set = set()
        self.thread = threading.Thread(target=self._produce, args=(samples,), daemon=True, name="refineg-tagging")
        self.thread.start()

    def _produce(self, samples: Iterable[Sample]) -> None:
        try:
            # the first batches are small, so that the first MLLM requests go out at once; then tag_batch
            batch, size = [], min(FIRST_BATCH, self.tag_batch)
            for item in enumerate(samples):
                batch.append(item)
                if len(batch) >= size:
                    self._start(batch)
                    batch, size = [], min(2 * size, self.tag_batch)
                if self.halt.is_set():
                    return
            if batch:
                self._start(batch)
        except BaseException as exc:  # handed to the consumer, which raises it
            self.done.put(exc)
        finally:
            self.done.put(_END)

    def _start(self, batch: list[tuple[int, Sample]]) -> None:
        tagged = self.nlp.tag([s for _, s in batch])
        parts = self.nlp.llm
        for (i, s), t in zip(batch, tagged):
            while not self.slots.acquire(timeout=0.2):
                if self.halt.is_set():
                    return
            if self.halt.is_set():
                return
            self.started += 1
            if parts is None:
                self.done.put(Finished(i, s, t, t))
                continue
            fut = parts.client.submit(self.nlp.finish(s, t))
            self.futures.add(fut)
            fut.add_done_callback(lambda f, i=i, s=s, t=t: self._finished(f, i, s, t))

    def _finished(self, fut, i: int, s: Sample, t: Prediction) -> None:
        self.futures.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        self.done.put(exc if exc is not None else Finished(i, s, t, fut.result()))

    def __iter__(self) -> Iterator[Finished]:
        received, ended, waiting, next_index = 0, False, {}, 0
        while not ended or received < self.started:
            try:
                item = self.done.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                ended = True
                continue
            if isinstance(item, BaseException):
                raise item
            received += 1
            if not self.ordered:
                self.slots.release()
                yield item
                continue
            waiting[item.index] = item
            while next_index in waiting:
                self.slots.release()
                yield waiting.pop(next_index)
                next_index += 1

    def stop(self) -> None:
        """Stop tagging and starting posts, and cancel the MLLM work still under way."""
        self.halt.set()
        self.thread.join()  # first, so that no post is started after the cancelling
        if self.futures:  # only then is the LLM open (asking for it would open it)
            self.nlp.llm.client.cancel(self.futures)


def marked(pred: Prediction, *reasons: str) -> Prediction:
    """The prediction marked for a retry: a rerun of the same command re-does it."""
    return pred.with_(meta={**pred.meta, "status": RETRY, "retry_reason": ", ".join(reasons)})


def check_images(samples: Iterable[Sample], cfg: RunConfig) -> int:
    """Stop before any work when more than ``[run] missing_images_limit`` of the posts that name an image have
    none in the image folders, unless ``[run] allow_missing_images`` (never without an LLM: images are not
    used); the number of posts looked at."""
    seen = named = missing = 0
    example = None
    for s in samples:
        seen += 1
        if cfg.llm.configured and s.image:
            named += 1
            if find_image(s.image, cfg.run.images) is None:
                missing += 1
                example = example or s
    run = cfg.run
    if named and missing > run.missing_images_limit * named and not run.allow_missing_images:
        raise DataError(
            f"{missing} of {named} samples name an image that is in none of "
            f"{', '.join(map(str, run.images)) or 'the image folders'} (e.g. {example.image!r} of "
            f"sample {example.id}); give the image folders with --images (repeatable), or "
            "--allow-missing-images to ground only the samples whose image is there"
        )
    return seen


def _decoded(image):
    """A path or PIL image from what the API was handed: a path, a PIL image or its encoded bytes."""
    if isinstance(image, (bytes, bytearray)):
        return open_image(io.BytesIO(bytes(image)))
    return image


def _checked_image(image, sid: str):
    """What the API accepts as a post's image, checked now: an existing file, a PIL image or encoded bytes."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise DataError("image not found", path, sample=sid)
        return path
    if isinstance(image, (bytes, bytearray)):
        open_image(io.BytesIO(bytes(image)))  # DataError now, not when the MLLM stage wants it
        return bytes(image)
    if isinstance(image, Image.Image):
        return image
    raise DataError(
        f"image must be a file path, a PIL image or the bytes of an image, not {type(image).__name__}", sample=sid
    )


def load(
    model_dir: str | Path,
    llm: dict | None = None,
    demos: str | Path | None = None,
    demo_ids: Sequence[str] | None = None,
    images: Sequence[str | Path] = (),
    config: str | Path | None = None,
    settings: dict[str, dict] | None = None,
    **run,
) -> Pipeline:
    """A Pipeline for MODEL_DIR. ``llm`` holds LLM settings (base_url, model, box_format, ...), ``demos`` the
    labelled pool of grounding demonstrations, ``images`` the image folders, ``settings`` other config sections
    ({"ground": {...}}), ``run`` other [run] settings (clip, strict, window, ...) and ``config`` a TOML file.
    Without an LLM it is text-only GMNER (tagger and gate)."""
    run = {
        **run,
        "images": [Path(p) for p in images] or None,
        "demos": demos,
        "demo_ids": list(demo_ids) if demo_ids else None,
    }
    settings = dict(settings or {})
    cfg = load_config(
        Path(config) if config else None,
        {
            **settings,
            "llm": {**settings.get("llm", {}), **(llm or {})},
            "run": {"progress": False, **settings.get("run", {}), **run},
        },
    )
    return Pipeline(model_dir, cfg)
