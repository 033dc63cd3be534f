"""``refineg run --engine ray``: the pipeline's stages as Ray Data operators, resumable, writing what
the local engine writes.

    driver      read DATA; fold the shard files of a killed run into PRED; skip finished ids
       |        ray.data.from_items: the posts left, in blocks
       v
    _Tagger     map_batches, a pool of actors (tagger_cpus / tagger_gpus each): tag and gate;
       |        each actor loads the model once
       v
    _Refiner    map_batches, a pool of async actors: refine and ground; one LLM client each,
       |        llm.concurrency per endpoint split between them; the demo index from the object store
       v
    driver      rows appended to PRED.jsonl.shards/shard-NNNNN.jsonl as they finish (fsynced)
                at the end: the shards merged in input order into PRED.jsonl (atomically), and the summary

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
import shutil
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import RunConfig, default_cache_dir
from .data import load_samples
from .data.jsonl import json_line
from .data.textio import atomic_open
from .errors import ConfigError, RefinegError
from .pipeline import (RunOptions, DemoIndex, Pipeline, _folders, _Images, _LLMStages, done_ids, finish_run,
                       load_groundability, model_setting, model_types, output_rows)

log = logging.getLogger(__name__)

SHARDS = ".shards"


def shard_folder(out: Path) -> Path:
    """Where a Ray run keeps its rows until they are merged into out."""
    return out.with_name(out.name + SHARDS)


def fold_shards(out: Path, order: list[str]) -> int:
    """Merge the shard files into out, atomically, in the input's order (ids not in it stay last); the number
    of shard rows folded. A row in a shard is newer than out's row for the same id."""
    folder = shard_folder(out)
    files = sorted(folder.glob("shard-*.jsonl")) if folder.is_dir() else []
    rows: dict[str, str] = {}
    folded = 0
    for path in ([out] if out.is_file() else []) + files:
        for sid, _, line in output_rows(path):
            rows[sid] = line
            folded += path != out
    if files:
        rank = {sid: k for k, sid in enumerate(order)}
        with atomic_open(out) as fh:
            fh.writelines(rows[sid] + "\n" for sid in sorted(rows, key=lambda sid: rank.get(sid, len(rank))))
            fh.flush()
            os.fsync(fh.fileno())
    if folder.is_dir():
        shutil.rmtree(folder)
    return folded


class _ShardWriter:
    """Appends finished rows to the shard file of their position in the input, each id once."""

    def __init__(self, folder: Path, rank: dict[str, int], shard_size: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.rank, self.shard_size = folder, rank, shard_size
        self.written: set[str] = set()

    def write(self, ids: list[str], lines: list[str]) -> None:
        """Append the rows of one batch, one fsync per shard file touched."""
        by_shard: dict[int, list[str]] = {}
        for sid, line in zip(ids, lines):
            if sid not in self.written:  # a batch Ray re-ran after an actor died
                self.written.add(sid)
                by_shard.setdefault(self.rank[sid] // self.shard_size, []).append(line)
        for shard, rows in by_shard.items():
            with (self.folder / f"shard-{shard:05d}.jsonl").open("a", encoding="utf-8") as fh:
                fh.writelines(rows)
                fh.flush()
                os.fsync(fh.fileno())


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
        preds = self.nlp.tag(_unpacked(batch["sample"])).predictions
        seconds = np.zeros(len(preds))
        seconds[:1] = time.perf_counter() - t0
        return {"sample": batch["sample"], "tagged": _packed(preds), "tag_seconds": seconds}


class _Refiner:
    """An LLM actor: one client, the demo index from the object store; several batches in flight at once."""

    def __init__(self, model_dir: str, cfg_json: str, options: RunOptions, index_ref: list):
        import ray

        cfg = RunConfig.model_validate_json(cfg_json)
        index = ray.get(index_ref[0]) if index_ref else None
        self.stages = _LLMStages.open(cfg, model_types(model_dir), options, True, load_groundability(model_dir, cfg),
                                      index)
        self.name, self.seq = uuid.uuid4().hex, 0

    async def __call__(self, batch: dict) -> dict:
        samples, tagged = _unpacked(batch["sample"]), _unpacked(batch["tagged"])
        done = await asyncio.to_thread(self.stages.process, samples, tagged)
        stats = [""] * len(done)
        stats[0] = self._stats()
        return {"line": np.asarray([json_line(p) for p in done], dtype=object), "tagged": batch["tagged"],
                "tag_seconds": batch["tag_seconds"], "stats": np.asarray(stats, dtype=object)}

    def _stats(self) -> str:
        """This actor's counters so far, numbered: the driver keeps each actor's latest."""
        self.seq += 1
        return json.dumps({"actor": self.name, "seq": self.seq, "counts": dict(self.stages.counts),
                           "timings": dict(self.stages.timings), "usage": self.stages.client.usage.state(),
                           "notes": self.stages.notes})


@contextlib.contextmanager
def _cluster(address: str | None, verbose: bool) -> Iterator[str]:
    """Connected to ADDR ('auto': a running cluster), or to a local cluster started (and stopped) here;
    the actors' own log lines are shown unless quiet."""
    import ray

    if ray.is_initialized():  # a Python caller's own session
        yield "existing session"
        return
    kw = dict(logging_level=logging.WARNING, include_dashboard=False, log_to_driver=verbose)
    try:
        ray.init(address=address, **kw) if address else ray.init(num_cpus=os.cpu_count(), **kw)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    try:
        yield address or "local cluster"
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _shared_endpoint(cfg: RunConfig) -> Iterator[RunConfig]:
    """The config the actors get: the cache folder fixed, and an embedded GGUF served once, from here."""
    from .llm.client import cache_scope, embedded_server

    llm = cfg.llm.model_copy(update={"cache_dir": cfg.llm.cache_dir or default_cache_dir()})
    if not llm.gguf:
        yield cfg.model_copy(update={"llm": llm})
        return
    server = embedded_server(llm)
    try:
        yield cfg.model_copy(update={"llm": llm.model_copy(update={
            "base_url": server.base_url, "model": llm.model or server.model, "gguf": None, "mmproj": None,
            "cache_scope": cache_scope(llm)})})
    finally:
        server.close()


def run_ray(model_dir: str | Path, data: str | Path, out: str | Path, cfg: RunConfig,
            options: RunOptions = RunOptions(), address: str | None = None) -> dict:
    """``run_pipeline`` on a Ray cluster: the same rows and summary; a rerun re-does only unfinished samples."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'refineg[ray]'") from None

    out, t0 = Path(out), time.perf_counter()
    options = replace(options, images=tuple(_folders(options.images, data)))
    samples = load_samples(data)
    order = [s.id for s in samples]
    fold_shards(out, order)
    finished = done_ids(out, cfg.llm.configured)
    todo = [s for s in samples if s.id not in finished]
    if cfg.llm.configured:
        _Images(list(options.images), options.strict, None, Counter()).check_missing(todo, options.allow_missing_images)
    timings = Counter(load=time.perf_counter() - t0)
    address = address or cfg.ray.address
    tagged, stats, local, where = [], {}, None, "not needed: nothing left to do"
    if todo:
        with _shared_endpoint(cfg) as cfg, _cluster(address, options.progress) as where:
            _configure(ray, options.progress)
            ds = _plan(ray, model_dir, todo, cfg, options)
            try:
                tagged, stats, local = _consume(ds, out, order, cfg, model_dir, options, timings)
            except ray.exceptions.RayError as exc:  # an actor's own error, e.g. a missing image with --strict
                raise _refineg_cause(exc) or exc from None
    fold_shards(out, order)
    counts, usage, notes = _totals(stats, local, cfg, timings)
    engine = {"name": "ray", "address": where, "tagger_actors": cfg.ray.tagger_actors,
              "llm_actors": _llm_actors(cfg), "llm_concurrency_per_actor": _per_actor(cfg)}
    return finish_run(out, samples, finished, tagged, counts, timings, usage, notes, cfg,
                      load_groundability(model_dir, cfg), engine, model_setting(model_dir))


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


def _plan(ray, model_dir, todo, cfg: RunConfig, options: RunOptions):
    """The dataset of the posts left, through the tagger pool and (with an LLM) the refiner pool."""
    r = cfg.ray
    blocks = max(1, min(1000, -(-len(todo) // r.batch_size)))  # no more actors than blocks: a tiny input starts one
    ds = ray.data.from_items([{"sample": pickle.dumps(s)} for s in todo], override_num_blocks=blocks)
    tag_cfg = cfg.model_copy(update={"tagger": cfg.tagger.model_copy(update={"threads": max(1, int(r.tagger_cpus))})})
    # a block is a batch (blocks smaller than batch_size would be bundled into fewer tasks than actors);
    # a GPU pool needs an explicit batch size
    ds = ds.map_batches(_Tagger, fn_constructor_args=(str(model_dir), tag_cfg.model_dump_json()),
                        batch_size=r.batch_size if r.tagger_gpus else None,
                        compute=ray.data.ActorPoolStrategy(size=min(r.tagger_actors, blocks)), num_cpus=r.tagger_cpus,
                        num_gpus=r.tagger_gpus or None, batch_format="numpy", udf_modifying_row_count=False)
    if not cfg.llm.configured:
        return ds
    index = [ray.put(DemoIndex.build(cfg, options))] if options.demos is not None else []
    llm_cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"concurrency": _per_actor(cfg)})})
    actor_options = replace(options, progress=False)
    return ds.map_batches(_Refiner, fn_constructor_args=(str(model_dir), llm_cfg.model_dump_json(), actor_options, index),
                          batch_size=None, compute=ray.data.ActorPoolStrategy(size=min(_llm_actors(cfg), blocks)),
                          num_cpus=r.llm_cpus, max_concurrency=r.llm_batches, batch_format="numpy",
                          udf_modifying_row_count=False)


def _consume(ds, out: Path, order: list[str], cfg: RunConfig, model_dir, options: RunOptions, timings: Counter):
    """Write rows to their shards as batches arrive; the tagged predictions, each actor's latest stats, and
    the driver's own stages (which mark rows for a retry when there is no LLM)."""
    local = _LLMStages.open(cfg, model_types(model_dir), options) if not cfg.llm.configured else None
    writer = _ShardWriter(shard_folder(out), {sid: k for k, sid in enumerate(order)}, cfg.ray.shard_size)
    tagged, stats = [], {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        preds = _unpacked(batch["tagged"])
        timings["tag_and_gate"] += float(batch["tag_seconds"].sum())
        if local is not None:  # no LLM: a later run with one completes these rows
            lines = [json_line(local.mark(p, "no_llm") if p.entities else p) for p in preds]
        else:
            lines = list(batch["line"])
            for raw in filter(None, batch["stats"]):
                st = json.loads(raw)
                if st["seq"] > stats.get(st["actor"], {}).get("seq", 0):
                    stats[st["actor"]] = st
        writer.write([p.id for p in preds], lines)
        tagged.extend(preds)
    return tagged, stats, local


def _totals(stats: dict, local: _LLMStages | None, cfg: RunConfig, timings: Counter) -> tuple[Counter, dict, list]:
    """The counts, LLM usage (priced) and notes of every actor added up; their seconds go into timings."""
    from .llm.accounting import Usage

    if local is not None:
        return local.counts, {}, local.notes
    counts, usage, notes = Counter(), Usage(), []
    for st in stats.values():
        counts.update(st["counts"])
        timings.update(st["timings"])
        usage.absorb(st["usage"])
        notes = notes or st["notes"]
    return counts, usage.summary(cfg.llm.price_prompt_per_1k, cfg.llm.price_completion_per_1k), notes
