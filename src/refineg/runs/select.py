"""``refineg select``: the posts of a pool to label next, written as ids or as Label Studio tasks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import RunConfig
from ..data import load_unlabeled
from ..data.images import find_image
from ..data.labelstudio import image_for_task, task, write_tasks
from ..data.textio import atomic_open
from ..pipeline import Pipeline
from ..select import Choice, Rated, choose
from .local import with_folders


def select_file(
    model_dir: str | Path,
    pool_path: str | Path,
    labelled_ids: Sequence[str],
    budget: int,
    cfg: RunConfig,
    strategy: str,
    seed: int = 0,
    fmt: str = "ids",
    out: str | Path | None = None,
    image_url: str | None = None,
) -> Choice:
    """Choose budget posts of the pool file and write them to out: ids one a line, or Label Studio tasks whose
    pre-annotations are the model's entities (and, with an MLLM, their boxes)."""
    cfg = with_folders(cfg, pool_path)
    pool = load_unlabeled(pool_path)
    with Pipeline(model_dir, cfg) as nlp:
        choice = choose(nlp.tagging, pool, set(labelled_ids), budget, strategy, seed, cfg.run.progress)
        if out is not None and fmt == "ids":
            with atomic_open(out) as fh:
                fh.write("".join(r.sample.id + "\n" for r in choice.chosen))
        elif out is not None:
            write_tasks(_tasks(nlp, choice.chosen, image_url), out)
    return choice


def _tasks(nlp: Pipeline, chosen: list[Rated], image_url: str | None) -> list[dict]:
    """Label Studio tasks for the chosen posts: the model's entities, refined and grounded when an MLLM is set."""
    samples = [r.sample for r in chosen]
    preds = nlp.process(samples, nlp.tag(samples))
    version = f"refineg ({nlp.setting})"
    out = []
    for r, p in zip(chosen, preds):
        url, size = image_for_task(find_image(r.sample.image, nlp.cfg.run.images), image_url)
        out.append(task(r.sample, p, url, size, version, r.risk if r.risk else None))
    return out
