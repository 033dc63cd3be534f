"""Training: AdamW with warm-up and linear decay, separate learning rates for encoder, head and CRF,
length-bucketed batches, best epochs by dev MNER F1 with early stopping, then a greedy weight
average of the best epochs. Seeded."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TaggerConfig
from ..data.bio import tags_from_spans
from ..data.textio import atomic_open
from ..errors import ConfigError, DataError
from ..eval.metrics import score
from ..progress import duration, say, tqdm
from ..types import Sample
from .encoder import load_encoder
from .features import shape_ids
from .model import TaggerModel
from .tagger import Tagger, build_model, lexicon_of, prior_for

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    """What happened in training, saved as MODEL_DIR/meta.json."""

    epochs_run: int = 0
    best_epoch: int = 0
    best_dev_f1: float = 0.0
    dev_f1_by_epoch: list[float] = field(default_factory=list)
    loss_by_epoch: list[float] = field(default_factory=list)
    train_sentences: int = 0
    soup_epochs: list[int] = field(default_factory=list)  # epochs whose weights were averaged into the model
    soup_dev_f1: float = 0.0
    seconds: float = 0.0
    resumed_after_epoch: int = 0  # an earlier, killed run of this training saved its state after this epoch

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def labels_for(samples: Sequence[Sample]) -> list[str]:
    """``O`` then B-/I- tags of every type seen, sorted."""
    types = sorted({e.type for s in samples for e in s.entities})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def _examples(
    samples: Sequence[Sample],
    labels: list[str],
    weights: Sequence[float] | None = None,
    unknown: Sequence[frozenset[int]] | None = None,
) -> list[tuple]:
    """(words, shapes, tag ids, prior ids, weight, allowed tags or None) per sample with tokens."""
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for k, s in enumerate(samples):
        if not s.tokens:
            continue
        spans = [(e.start, e.end, e.type) for e in s.entities]
        if any(st is None for st, _, _ in spans):
            raise DataError("training entities need token offsets", sample=s.id)
        try:
            tags = [index[t] for t in tags_from_spans(len(s.tokens), spans)]
        except ValueError as exc:
            raise DataError(f"cannot train on it: {exc}", sample=s.id) from None
        free = unknown[k] if unknown is not None else frozenset()
        out.append(
            (
                list(s.tokens),
                shape_ids(s.tokens),
                tags,
                None,
                float(weights[k]) if weights is not None else 1.0,
                allowed_tags(tags, free, labels) if free else None,
            )
        )
    return out


def allowed_tags(tags: list[int], unknown: frozenset[int], labels: list[str]) -> np.ndarray:
    """(W, K) mask of the tags each word may take: its own tag, or any tag that starts or stays outside an
    entity where the tag is unknown (an I- tag only after another unknown word, so a known entity is not extended)."""
    allowed = np.zeros((len(tags), len(labels)), dtype=bool)
    allowed[np.arange(len(tags)), tags] = True
    opening = np.array([not lab.startswith("I-") for lab in labels])
    for i in sorted(unknown):
        allowed[i] = True if i > 0 and i - 1 in unknown else opening
    return allowed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(model: TaggerModel, cfg: TaggerConfig) -> torch.optim.Optimizer:
    groups: dict[str, list] = {"encoder": [], "encoder_nd": [], "crf": [], "head": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("encoder."):
            no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
            groups["encoder_nd" if no_decay else "encoder"].append(p)
        elif name.startswith("crf."):
            groups["crf"].append(p)
        else:
            groups["head"].append(p)
    return torch.optim.AdamW(
        [
            {"params": groups["encoder"], "lr": cfg.lr_encoder, "weight_decay": cfg.weight_decay},
            {"params": groups["encoder_nd"], "lr": cfg.lr_encoder, "weight_decay": 0.0},
            {"params": groups["head"], "lr": cfg.lr_head, "weight_decay": cfg.weight_decay},
            {"params": groups["crf"], "lr": cfg.lr_crf, "weight_decay": 0.0},
        ],
        fused=True,
    )  # the fused kernel: the per-tensor loop cost a fifth of each CPU epoch


def train_tagger(
    train: Sequence[Sample],
    dev: Sequence[Sample] | None,
    cfg: TaggerConfig,
    progress: bool = True,
    on_epoch: Callable[[int, float, float], None] | None = None,
    weights: Sequence[float] | None = None,
    init: Tagger | None = None,
    unknown: Sequence[frozenset[int]] | None = None,
    state_dir: Path | None = None,
) -> tuple[Tagger, TrainReport]:
    """Train on train (each sentence weighted by ``weights``, default 1); pick the epoch with the best dev MNER
    F1 (the last epoch without dev). ``init`` starts from another tagger's weights (a self-training student).
    ``unknown`` gives per sentence the word positions whose tag is not known (partly labelled posts).
    With ``state_dir``, the training state is saved there after an epoch (every ``checkpoint_seconds``), and a
    training of the same data and settings found there goes on from it."""
    from transformers import get_linear_schedule_with_warmup

    t0 = time.perf_counter()
    # read before seeding: a loaded tagger builds its network on first use, which would draw from the seeded stream
    init_state = init.model.state_dict() if init is not None else None
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    labels = init.labels if init is not None else labels_for(list(train) + list(dev or []))
    examples = _examples(train, labels, weights, unknown)
    if not examples:
        raise DataError("no training sentences")
    encoder, tokenizer = load_encoder(cfg.encoder)
    prior = prior_for(cfg)
    model = build_model(encoder, labels, cfg, prior)
    if init_state is not None:
        model.load_state_dict(init_state)
    if cfg.freeze_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    tagger = Tagger(model, tokenizer, cfg, prior, lexicon_of(train))
    if prior is not None:
        examples = [
            (w, s, t, p, wt, a) for (w, s, t, _, wt, a), p in zip(examples, prior.ids([e[0] for e in examples]))
        ]
    opt = _optimizer(model, cfg)
    passes = passes_per_epoch(len(examples), cfg)
    lengths = [tagger.aligner.n_subtokens(e[0]) for e in examples]
    steps = cfg.epochs * passes * math.ceil(len(examples) / cfg.batch_size)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * steps), steps)
    run = _Run(TrainReport(train_sentences=len(examples)), random.Random(cfg.seed))
    if state_dir is not None and (state_dir / _STATE).is_file():
        run = _resumed(state_dir, model, opt, sched)
    saved_at = time.perf_counter()
    for epoch in range(run.report.epochs_run + 1, cfg.epochs + 1):
        batches = [b for _ in range(passes) for b in _batches(lengths, cfg.batch_size, run.rng)]
        loss = _run_epoch(tagger, examples, batches, opt, sched, progress, epoch)
        f1 = _dev_f1(tagger, dev)
        report = run.report
        report.loss_by_epoch.append(round(loss, 4))
        report.dev_f1_by_epoch.append(round(f1, 4))
        report.epochs_run = epoch
        log.info("epoch %d: loss %.4f, dev MNER F1 %.4f", epoch, loss, f1)
        if progress:
            _say_epoch(run, epoch, cfg.epochs, loss, f1 if dev else None, time.perf_counter() - t0)
        if on_epoch:
            on_epoch(epoch, loss, f1)
        improved = not run.snapshots or f1 > run.snapshots[0].f1 or not dev
        run.snapshots = sorted(
            run.snapshots + [_Snapshot(f1, epoch, copy.deepcopy(model.state_dict()))],
            key=lambda s: (-s.f1, -s.epoch) if dev else -s.epoch,
        )[: max(1, cfg.soup)]
        run.stale = 0 if improved else run.stale + 1
        if run.stale >= cfg.patience or epoch == cfg.epochs:
            break
        if state_dir is not None and time.perf_counter() - saved_at >= cfg.checkpoint_seconds:
            _save_state(state_dir, run, model, opt, sched, run.seconds_before + time.perf_counter() - t0)
            saved_at = time.perf_counter()
    report = run.report
    report.best_epoch, report.best_dev_f1 = run.snapshots[0].epoch, run.snapshots[0].f1
    report.soup_epochs, report.soup_dev_f1 = _greedy_soup(tagger, run.snapshots, dev)
    model.eval()
    # from here on, predictions run as they will after loading (ONNX Runtime, int8 if dev allows, by default)
    tagger.use_runtime((lambda: _dev_f1(tagger, dev)) if dev else None)
    report.seconds = round(run.seconds_before + time.perf_counter() - t0, 1)
    return tagger, report


_STATE = "training.pt"


@dataclass
class _Run:
    """What a training carries from epoch to epoch, beside the weights, optimiser and schedule."""

    report: TrainReport
    rng: random.Random  # batch order
    snapshots: list = field(default_factory=list)  # the best epochs so far (_Snapshot), best first
    stale: int = 0  # epochs since dev F1 last rose
    seconds_before: float = 0.0  # spent by earlier, killed runs of this training


def _save_state(folder: Path, run: _Run, model: TaggerModel, opt, sched, seconds: float) -> None:
    """Everything the next epoch depends on, random streams included, and the seconds spent so far, written
    atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "report": run.report.as_dict(),
        "rng": run.rng.getstate(),
        "stale": run.stale,
        "seconds": seconds,
        "snapshots": [(s.f1, s.epoch, s.state) for s in run.snapshots],
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "random": (random.getstate(), np.random.get_state(), torch.get_rng_state()),
    }
    with atomic_open(folder / _STATE, "wb") as fh:
        torch.save(state, fh)


def _resumed(folder: Path, model: TaggerModel, opt, sched) -> _Run:
    """The run saved by _save_state, with the model, optimiser, schedule and random streams put back."""
    path = folder / _STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: Python random states
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise ConfigError(
            f"{path}: a damaged training state ({type(exc).__name__}); delete the folder {folder} to start over"
        ) from None
    py, np_state, torch_state = state["random"]
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)
    rng = random.Random()
    rng.setstate(state["rng"])
    report = TrainReport(**state["report"])
    report.resumed_after_epoch = report.epochs_run
    log.info("training resumed after epoch %d (%s)", report.epochs_run, path)
    return _Run(report, rng, [_Snapshot(*s) for s in state["snapshots"]], state["stale"], state["seconds"])


@dataclass(frozen=True)
class _Snapshot:
    f1: float
    epoch: int
    state: dict


def _dev_f1(tagger: Tagger, dev: Sequence[Sample] | None) -> float:
    return score(dev, tagger.predict(dev)).overall["mner"].f1 if dev else 0.0


def _average(states: list[dict]) -> dict:
    return {
        k: sum(s[k] for s in states) / len(states) if states[0][k].is_floating_point() else states[0][k]
        for k in states[0]
    }


def _greedy_soup(tagger: Tagger, snapshots: list[_Snapshot], dev: Sequence[Sample] | None) -> tuple[list[int], float]:
    """Load the weight average of the best epochs, adding each next-best one only if dev F1 does not drop.

    Averaging neighbouring epochs (a "greedy soup") smooths out the epoch-to-epoch swings that small
    training sets cause; each candidate costs one dev pass. Returns the epochs kept and their dev F1.
    """
    members, best = [snapshots[0]], snapshots[0].f1
    for candidate in snapshots[1:] if dev else []:
        tagger.model.load_state_dict(_average([m.state for m in members + [candidate]]))
        f1 = _dev_f1(tagger, dev)
        if f1 >= best:
            members, best = members + [candidate], f1
    tagger.model.load_state_dict(_average([m.state for m in members]))
    return sorted(m.epoch for m in members), best


def _batches(lengths: list[int], size: int, rng: random.Random, jitter: float = 8.0) -> list[list[int]]:
    """Indices in batches of similar sub-token length, in random order.

    Random batches of tweets padded to about twice their mean length; sorting on a jittered length
    keeps batches varied from epoch to epoch while most of that padding goes.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i] + rng.uniform(0, jitter))
    batches = [order[k : k + size] for k in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


def passes_per_epoch(n_examples: int, cfg: TaggerConfig) -> int:
    """How many times one epoch goes over the training set: enough for cfg.min_epoch_steps steps.

    With 100 sentences a single pass is 7 optimizer steps, and ten such epochs leave the model
    under-trained (dev F1 0.54 against 0.60 at fifteen); counting epochs in steps keeps the
    schedule, the dev checks and early stopping meaningful whatever the training set's size.
    """
    return max(1, math.ceil(cfg.min_epoch_steps / max(1, math.ceil(n_examples / cfg.batch_size))))


def _allowed(chunk: list[tuple], tags: np.ndarray) -> torch.Tensor | None:
    """The batch's (B, W, K) allowed-tag mask when some sentence in it is partly labelled, else None."""
    if all(c[5] is None for c in chunk):
        return None
    n_labels = next(c[5] for c in chunk if c[5] is not None).shape[1]
    allowed = np.zeros(tags.shape + (n_labels,), dtype=bool)
    np.put_along_axis(allowed, tags[..., None], True, axis=-1)  # known tags, and O on padding (masked anyway)
    for b, c in enumerate(chunk):
        if c[5] is not None:
            width = min(len(c[5]), tags.shape[1])  # words past the sub-token limit are dropped
            allowed[b, :width] = c[5][:width]
    return torch.from_numpy(allowed)


def _say_epoch(run: _Run, epoch: int, epochs: int, loss: float, f1: float | None, seconds: float) -> None:
    """One line per epoch: loss, dev F1 against the best so far, time spent and the most that is left (early
    stopping may end sooner)."""
    done = epoch - (run.report.resumed_after_epoch or 0)
    best = max([f1] + [s.f1 for s in run.snapshots]) if f1 is not None else None
    dev = f", dev MNER F1 {f1:.4f} (best {best:.4f})" if f1 is not None else ""
    left = seconds / max(1, done) * (epochs - epoch)
    say(
        f"epoch {epoch}/{epochs}: loss {loss:.4f}{dev}; {duration(seconds)} so far"
        + (f", at most about {duration(left)} left" if epoch < epochs else "")
    )


def _run_epoch(tagger: Tagger, examples, batches: list[list[int]], opt, sched, progress: bool, epoch: int) -> float:
    model = tagger.model
    model.train()
    total, n = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for batch in bar:
        chunk = [examples[i] for i in batch]
        priors = [c[3] for c in chunk] if tagger.prior is not None else None
        enc = tagger.aligner.encode([c[0] for c in chunk], [c[1] for c in chunk], priors)
        tags = np.zeros(enc.word_mask.shape, dtype=np.int64)
        for b, (_, _, tag_ids, _, _, _) in enumerate(chunk):
            tags[b, : len(tag_ids)] = tag_ids
        tags = tags * enc.word_mask  # words past the sub-token limit carry no label
        loss = model.loss(enc, torch.from_numpy(tags), torch.tensor([c[4] for c in chunk]), _allowed(chunk, tags))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        model.enforce_bio()
        total += loss.item() * len(chunk)
        n += len(chunk)
        bar.set_postfix(loss=f"{total / n:.3f}")
    return total / max(n, 1)
