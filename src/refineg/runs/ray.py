"""``refineg run --engine ray``: the pipeline's stages as Ray Data operators, resumable, writing what the
local engine writes through the same ``RunOutput``.

    driver      read DATA; skip ids already final in OUT (the output is locked while the run writes it)
       |        ray.data.from_items: the posts left, in blocks
       v
    _Tagger     map_batches, a pool of actors (tagger_cpus / tagger_gpus each): Pipeline.tag;
       |        each actor loads the model once
       v
    _Refiner    map_batches, a pool of async actors: Pipeline.process; one LLM client each,
       |        llm.concurrency per endpoint split between them; the demo index from the object store
       v
    driver      rows appended to OUT as they finish; at the end OUT is put in input order, and the summary

MODEL_DIR, the image folders and the cache folder must be readable at the same paths on every node
(a local cluster shares them; a multi-node cluster needs shared storage, or ``--cache-dir`` on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..config import RunConfig, default_cache_dir
from ..data import iter_samples
from ..errors import ConfigError, RefinegError
from ..ground.demos import DemoIndex
from ..ground.groundability import Groundability
from ..llm.client import cache_scope, embedded_server
from ..pipeline import NO_LLM_NOTE, Pipeline, check_images, marked
from ..tagger.tagger import read_setting
from .local import with_folders
from .output import RunOutput
from .summary import Tally, Work, run_summary, write_summary

log = logging.getLogger(__name__)


def _packed(items) -> np.ndarray:
    """A column of pickled objects (frozen dataclasses travel exactly, floats to the last bit)."""
    col = np.empty(len(items), dtype=object)
    col[:] = [pickle.dumps(x) for x in items]
    return col


def _unpacked(col) -> list:
    return [pickle.loads(x) for x in col]


class _Tagger:
    """A tagger actor: loads the model once, tags and gates batches."""

    def __init__(self, model_dir: str, cfg_json: str):
        self.nlp = Pipeline(model_dir, RunConfig.model_validate_json(cfg_json))

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        preds = self.nlp.tag(_unpacked(batch["sample"]))
        seconds = np.zeros(len(preds))
        seconds[:1] = time.perf_counter() - t0
        return {"sample": batch["sample"], "tagged": _packed(preds), "tag_seconds": seconds}


class _Refiner:
    """An LLM actor: one pipeline (and client), the demo index from the object store; several batches in
    flight at once."""

    def __init__(self, model_dir: str, cfg_json: str, index_ref: list):
        import ray

        index = ray.get(index_ref[0]) if index_ref else None
        self.nlp = Pipeline(model_dir, RunConfig.model_validate_json(cfg_json), demos=index, tagger=False)
        self.name, self.seq = uuid.uuid4().hex, 0

    async def __call__(self, batch: dict) -> dict:
        samples, tagged = _unpacked(batch["sample"]), _unpacked(batch["tagged"])
        done = await asyncio.to_thread(self.nlp.process, samples, tagged)
        stats = [""] * len(done)
        self.seq += 1
        stats[0] = json.dumps({"actor": self.name, "seq": self.seq, "report": self.nlp.report()})
        return {
            "done": _packed(done),
            "tagged": batch["tagged"],
            "tag_seconds": batch["tag_seconds"],
            "stats": np.asarray(stats, dtype=object),
        }


@contextlib.contextmanager
def _cluster(address: str | None, verbose: bool) -> Iterator[str]:
    """Connected to ADDR ('auto': a running cluster), or to a local cluster started (and stopped) here;
    the actors' own log lines are shown unless quiet."""
    import ray

    if ray.is_initialized():  # a Python caller's own session
        yield "existing session"
        return
    kw = dict(logging_level=logging.WARNING, include_dashboard=False, log_to_driver=verbose)
    # RAY_ADDRESS is set by `ray job submit`; without it or an address, a cluster of our own, even when another
    # one runs on this machine ("local": a plain ray.init would join that one)
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, **kw) if address else ray.init(address="local", num_cpus=os.cpu_count(), **kw)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    try:
        yield address or "local cluster"
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _shared_endpoint(cfg: RunConfig) -> Iterator[RunConfig]:
    """The config the actors get: the cache folder fixed, and an embedded GGUF served once, from here."""
    llm = cfg.llm.model_copy(update={"cache_dir": cfg.llm.cache_dir or default_cache_dir()})
    if not llm.gguf:
        yield cfg.model_copy(update={"llm": llm})
        return
    server = embedded_server(llm)
    try:
        yield cfg.model_copy(
            update={
                "llm": llm.model_copy(
                    update={
                        "base_url": server.base_url,
                        "model": llm.model or server.model,
                        "gguf": None,
                        "mmproj": None,
                        "cache_scope": cache_scope(llm),
                    }
                )
            }
        )
    finally:
        server.close()


def run_ray(model_dir: str | Path, data: str | Path, out: str | Path, cfg: RunConfig) -> dict:
    """``run_file`` on a Ray cluster (``[ray] address``, or a local one): the same rows and summary; a rerun
    re-does only unfinished samples."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'refineg[ray]'") from None

    t0 = time.perf_counter()
    cfg = with_folders(cfg, data)
    with RunOutput(out, cfg.llm.configured) as output:
        samples = list(iter_samples(data))  # Ray's dataset is made from the items in memory
        order = [s.id for s in samples]
        todo = [s for s in samples if s.id not in output.done]
        check_images(todo, cfg)
        seconds = {"load": time.perf_counter() - t0, "tag_and_gate": 0.0}
        tally, work, where = Tally(), Work(), "not needed: nothing left to do"
        if todo:
            with _shared_endpoint(cfg) as cfg, _cluster(cfg.ray.address, cfg.run.progress) as where:
                _configure(ray, cfg.run.progress)
                try:
                    _consume(_plan(ray, model_dir, todo, cfg), output, tally, work, seconds, cfg)
                except ray.exceptions.RayError as exc:  # an actor's own error, e.g. a missing image with --strict
                    raise _refineg_cause(exc) or exc from None
        output.put_in_order(order)
    if not cfg.llm.configured:
        work.notes = [NO_LLM_NOTE]
    seconds["total"] = time.perf_counter() - t0
    engine = {
        "name": "ray",
        "address": where,
        "tagger_actors": cfg.ray.tagger_actors,
        "llm_actors": _llm_actors(cfg),
        "llm_concurrency_per_actor": _per_actor(cfg),
    }
    found = Groundability.load(model_dir)
    summary = run_summary(
        len(samples),
        len(samples) - len(todo),
        tally,
        work,
        seconds,
        cfg,
        found.at_recall(cfg.ground.groundability_recall) if found else None,
        engine,
        read_setting(model_dir),
    )
    write_summary(out, summary)
    return summary


def _configure(ray, progress: bool) -> None:
    """Ray Data's progress bars only with progress, its notices only at warning level, and an actor's own
    exception passed on as it is (not as a generic "UDF failed")."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    ctx.raise_original_map_exception = True
    # quiet: an actor's error is raised here as one clean line, so Ray's own report of it is not shown
    logging.getLogger("ray.data").setLevel(logging.WARNING if progress else logging.CRITICAL)


def _refineg_cause(exc: BaseException) -> RefinegError | None:
    """The RefinegError an actor raised, found behind Ray's wrappers (its message names the file or sample)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RefinegError):
            return cause
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


def _llm_actors(cfg: RunConfig) -> int:
    """LLM actors: never more than the per-endpoint concurrency, so each holds at least one slot."""
    return min(cfg.ray.llm_actors, cfg.llm.concurrency)


def _per_actor(cfg: RunConfig) -> int:
    return cfg.llm.concurrency // _llm_actors(cfg)


def _plan(ray, model_dir, todo, cfg: RunConfig):
    """The dataset of the posts left, through the tagger pool and (with an LLM) the refiner pool."""
    r = cfg.ray
    blocks = max(1, min(1000, -(-len(todo) // r.batch_size)))  # no more actors than blocks: a tiny input starts one
    ds = ray.data.from_items([{"sample": pickle.dumps(s)} for s in todo], override_num_blocks=blocks)
    tag_cfg = cfg.model_copy(update={"tagger": cfg.tagger.model_copy(update={"threads": max(1, int(r.tagger_cpus))})})
    # a block is a batch (blocks smaller than batch_size would be bundled into fewer tasks than actors);
    # a GPU pool needs an explicit batch size
    ds = ds.map_batches(
        _Tagger,
        fn_constructor_args=(str(model_dir), tag_cfg.model_dump_json()),
        batch_size=r.batch_size if r.tagger_gpus else None,
        compute=ray.data.ActorPoolStrategy(size=min(r.tagger_actors, blocks)),
        num_cpus=r.tagger_cpus,
        num_gpus=r.tagger_gpus or None,
        batch_format="numpy",
        udf_modifying_row_count=False,
    )
    if not cfg.llm.configured:
        return ds
    index = [ray.put(DemoIndex.build(cfg))] if cfg.run.demos is not None else []
    llm_cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"concurrency": _per_actor(cfg)})})
    return ds.map_batches(
        _Refiner,
        fn_constructor_args=(str(model_dir), llm_cfg.model_dump_json(), index),
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=min(_llm_actors(cfg), blocks)),
        num_cpus=r.llm_cpus,
        max_concurrency=r.llm_batches,
        batch_format="numpy",
        udf_modifying_row_count=False,
    )


def _consume(ds, output: RunOutput, tally: Tally, work: Work, seconds: dict, cfg: RunConfig) -> None:
    """Append rows as batches arrive (each id once: Ray may re-run a batch after an actor died), counting the
    gate's decisions and keeping each actor's latest report."""
    reports: dict[str, dict] = {}
    written: set[str] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        tagged = _unpacked(batch["tagged"])
        seconds["tag_and_gate"] += float(batch["tag_seconds"].sum())
        if cfg.llm.configured:
            done = _unpacked(batch["done"])
            for raw in filter(None, batch["stats"]):
                st = json.loads(raw)
                if st["seq"] > reports.get(st["actor"], {}).get("seq", 0):
                    reports[st["actor"]] = st
        else:  # no LLM: a later run with one completes these rows
            done = [marked(p, "no_llm") if p.entities else p for p in tagged]
            work.counts.update({"rows_marked_retry": sum(1 for p in tagged if p.entities)})
        fresh = [(t, p) for t, p in zip(tagged, done) if p.id not in written]
        written.update(p.id for _, p in fresh)
        output.append([p for _, p in fresh])
        for t, _ in fresh:
            tally.add(t)
    for st in reports.values():
        work.add(st["report"])
