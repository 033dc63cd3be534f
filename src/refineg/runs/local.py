"""The local engine of ``refineg run`` and ``refineg ground``: posts stream through the pipeline in this
process, rows are written as they finish, and the output is put in input order at the end. A rerun of a
killed (or failed) run goes on where it stopped.

    read DATA (a first pass: which posts are left, are their images there?)
    tag batches on a thread  ->  each post's MLLM calls on the client's event loop, ``[run] window`` at most
    rows appended as they finish (flushed at once)  ->  sorted into input order  ->  OUT.summary.json
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from ..config import RunConfig
from ..data import iter_samples
from ..data.images import image_folders
from ..pipeline import Pipeline, check_images
from ..progress import progress_bar
from ..types import Sample
from .output import RunOutput
from .summary import Tally, Work, run_summary, write_summary


def with_folders(cfg: RunConfig, data: str | Path) -> RunConfig:
    """The config with the image folders a run over DATA uses: the ones given, else DATA's own folder."""
    return cfg.model_copy(
        update={"run": cfg.run.model_copy(update={"images": list(image_folders(cfg.run.images, data))})}
    )


def run_file(model_dir: str | Path, data: str | Path, out: str | Path, cfg: RunConfig) -> dict:
    """Tag, gate, refine, ground and write DATA's predictions to OUT; a rerun skips ids already final. The
    run's summary, also written beside OUT."""
    cfg = with_folders(cfg, data)
    with Pipeline(model_dir, cfg) as nlp:
        return stream_file(nlp, data, out)


def ground_file(data: str | Path, out: str | Path, cfg: RunConfig) -> dict:
    """Ground the entities DATA already has (their boxes are ignored); every sample gets a row."""
    cfg = with_folders(cfg, data)
    with Pipeline(None, cfg) as nlp:
        return stream_file(nlp, data, out)


def stream_file(nlp: Pipeline, data: str | Path, out: str | Path) -> dict:
    """Every post of DATA not yet final in OUT through the pipeline, written as it finishes; the summary."""
    t0 = time.perf_counter()
    with RunOutput(out, nlp.cfg.llm.configured) as output:
        order: list[str] = []
        left = check_images(_left(data, output.done, order), nlp.cfg)  # reads DATA whole before any work
        loaded = time.perf_counter() - t0
        if left:
            nlp.warm()  # the client, the demo index and the tagger's runtime ready before the first post
        warmed = time.perf_counter() - t0 - loaded
        tally = Tally()
        with progress_bar(left, "posts", nlp.cfg.run.progress) as bar:
            for done in nlp.stream(_left(data, output.done)):
                pred = done.prediction
                if nlp.llm is None and pred.entities:  # a later run with an LLM completes this row
                    pred = nlp.mark(pred, "no_llm")
                output.append([pred])
                tally.add(done.tagged)
                bar.update(1)
        output.put_in_order(order)
    work = Work()
    work.add(nlp.report())
    total = time.perf_counter() - t0
    seconds = {
        "load": loaded,
        "warm_up": warmed,
        "stream": total - loaded - warmed,
        "tag_and_gate": nlp.report()["tag_seconds"],
        "total": total,
    }
    summary = run_summary(
        len(order),
        len(order) - left,
        tally,
        work,
        seconds,
        nlp.cfg,
        nlp.groundability,
        {"name": "local", "window": nlp.cfg.run.window_for(nlp.cfg.llm.concurrency)},
        nlp.setting,
    )
    write_summary(out, summary)
    return summary


def _left(data: str | Path, done: set[str], order: list[str] | None = None) -> Iterator[Sample]:
    """DATA's posts not yet final, read one at a time; ``order`` collects every id in input order."""
    for s in iter_samples(data):
        if order is not None:
            order.append(s.id)
        if s.id not in done:
            yield s
