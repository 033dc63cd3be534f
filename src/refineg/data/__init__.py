"""Readers and writers: Twitter-GMNER, CCKS-GMNER and canonical JSONL, chosen by the path."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..types import Prediction, Sample
from .ccks import read_ccks, write_ccks
from .jsonl import iter_jsonl, read_jsonl, read_posts, read_predictions, write_jsonl
from .labelstudio import read_export
from .peers import is_riveg, json_kind, read_ccks_json, read_riveg, read_unco, write_ccks_json, write_riveg, write_unco
from .textio import text_lines
from .twitter_gmner import iter_twitter, read_token_columns, read_twitter, write_twitter

PEEK_LINES = 5000  # lines read to tell a file's kind

# every format a file can be read in (detect_format tells them apart), and written in
FORMATS = ("jsonl", "twitter", "ccks", "unco", "ccks-json", "riveg", "label-studio")
OUTPUT_FORMATS = ("jsonl", "twitter", "ccks", "unco", "unco-pred", "ccks-json", "riveg")


@dataclass(frozen=True)
class Dataset:
    """Samples read from one path, the format it had, and counts of anything odd in it."""

    samples: tuple[Sample, ...]
    path: Path
    format: str
    report: Counter = field(default_factory=Counter)


def detect_format(path: str | Path) -> str:
    """The format of an input path: ``jsonl``, ``twitter``, ``ccks`` (a folder), a Label Studio export
    (``label-studio``), or a peer's: ``unco`` (a JSON list), ``ccks-json`` (a CCKS submission: one JSON object of
    entity lists), ``riveg`` (``###`` lines)."""
    path = Path(path)
    if path.is_dir():
        return "ccks"
    if not path.exists():
        raise DataError("no such file or folder", path)
    if path.suffix in (".jsonl", ".json"):
        return json_kind(path)
    if path.suffix in (".txt", ".conll"):
        return "riveg" if is_riveg(path) else "twitter"
    raise DataError(
        "cannot tell the format: expected a .jsonl file, a Twitter-GMNER .txt split or a CCKS folder "
        "(or a peer's .json or ### lines)",
        path,
    )


def read_ids(path: str | Path) -> list[str]:
    """Sample ids of an ids file: one a line, blank lines and ``#`` comments ignored (a BOM is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such ids file", path)
    ids = [ln.strip().removeprefix("IMGID:") for _, ln in text_lines(path) if ln.strip() and not ln.startswith("#")]
    if not ids:
        raise DataError("no ids in the file", path)
    return ids


def load_dataset(path: str | Path, ids: list[str] | None = None, fmt: str | None = None) -> Dataset:
    """Read any supported input; with ids, keep only those samples, in the ids' order."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    report: Counter = Counter()
    if fmt == "twitter":
        samples, report = read_twitter(path)
    elif fmt == "ccks":
        samples, report = read_ccks(path)
    elif fmt == "jsonl":
        samples = read_jsonl(path)
    elif fmt == "unco":
        samples, _ = read_unco(path)
    elif fmt == "riveg":
        samples = read_riveg(path)
    elif fmt == "label-studio":
        samples = read_export(path)
    elif fmt == "ccks-json":
        samples = [Sample(p.id, (), p.entities) for p in read_ccks_json(path, source="gold")]
    else:
        raise DataError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})", path)
    if ids is not None:
        samples = pick_ids(samples, ids, path)
    return Dataset(tuple(samples), path, fmt, report)


def load_predictions(path: str | Path) -> list[Prediction]:
    """The predictions of a file in any format refineg reads: canonical JSONL, or a peer's (UnCo JSON, a CCKS
    submission JSON, RiVEG lines)."""
    fmt = detect_format(path)
    if fmt == "jsonl":
        return read_predictions(path)
    if fmt == "ccks-json":
        return read_ccks_json(path)
    if fmt not in ("unco", "riveg"):
        raise DataError(
            f"predictions are read from JSONL, UnCo JSON, CCKS submission JSON or RiVEG lines, not {fmt}", path
        )
    samples = read_unco(path)[0] if fmt == "unco" else read_riveg(path, "tagger")
    return [
        Prediction(s.id, tuple(e.with_(source="tagger") for e in s.entities), s.tokens or None, s.image)
        for s in samples
    ]


def pick_ids(samples: list[Sample], ids: list[str], path: str | Path) -> list[Sample]:
    """The samples with these ids, in the ids' order; DataError naming the ids that are not there."""
    by_id = {s.id: s for s in samples}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise DataError(f"{len(unknown)} id(s) not in the data, e.g. {unknown[:3]}", path)
    return [by_id[i] for i in ids]


def load_samples(path: str | Path, ids: list[str] | None = None) -> list[Sample]:
    """The samples of any supported input."""
    return list(load_dataset(path, ids).samples)


def iter_samples(path: str | Path) -> Iterator[Sample]:
    """The posts of anything a run takes, one at a time (a file is never held in memory whole): the labelled
    formats (their gold kept, for scores), or posts without labels, as ``load_unlabeled`` reads them. A ``.txt``
    is a Twitter-GMNER split when its token lines carry tags; otherwise its kind comes from its lines."""
    path = Path(path)
    if path.is_file() and path.suffix in (".txt", ".conll") and is_riveg(path):
        raise DataError(
            "a RiVEG file holds entities, not the posts' text: give the posts (a split, JSONL or UnCo JSON)", path
        )
    kind = _unlabeled_kind(path) if path.is_file() and path.suffix not in (".jsonl", ".json") else None
    if kind == "columns" and _tagged(path):
        yield from iter_twitter(path)
    elif kind in ("columns", "text") or (kind == "jsonl" and path.suffix not in (".jsonl", ".json")):
        yield from load_unlabeled(path)
    elif detect_format(path) == "jsonl":
        yield from iter_jsonl(path)
    else:
        yield from load_samples(path)


def _tagged(path: Path) -> bool:
    """True when most token lines of a token-per-line file have a second (tag) column."""
    lines = [
        ln for _, ln in itertools.islice(text_lines(path), PEEK_LINES) if ln.strip() and not ln.startswith("IMGID:")
    ]
    return sum(len(ln.split("\t") if "\t" in ln else ln.split()) >= 2 for ln in lines) >= 0.5 * max(1, len(lines))


def load_unlabeled(path: str | Path) -> list[Sample]:
    """Posts without labels: JSONL (tokens or text; ids optional, entities not read), a token-per-line file
    (a Twitter-GMNER split, tagged or not, or plain CoNLL; tags ignored), a CCKS folder (its entities
    dropped), or plain text with one post per line, tokenised the Twitter-GMNER way. The kind comes from
    the suffix and the lines, not the suffix alone: a ``.txt`` of JSON objects or lists is read as JSONL."""
    from .tokenize import tokenize

    path = Path(path)
    kind = _unlabeled_kind(path)
    if kind == "jsonl":
        posts = read_posts(path)
    elif kind == "columns":
        posts = read_token_columns(path)
    elif kind == "text":
        posts = [
            Sample(f"unlabeled-{n}", tuple(tokenize(line.strip())), raw_text=line.strip())
            for n, line in text_lines(path)
            if line.strip()
        ]
    else:
        posts = [s.with_(entities=()) for s in load_samples(path)]
    if not posts:  # self-training on nothing would quietly train the plain model
        raise DataError("no posts in the file", path)
    return posts


def _unlabeled_kind(path: Path) -> str:
    """``jsonl``, ``columns`` (a token per line), ``text`` (a post per line) or ``dataset`` (a CCKS folder); a
    text file whose first line is a JSON object or list is JSONL (a JSON string could be a quoted post)."""
    if not path.is_file():
        return "dataset"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    lines = [line for _, line in itertools.islice(text_lines(path), PEEK_LINES)]
    first = next((line.strip() for line in lines if line.strip()), "")
    if first.startswith("IMGID:") or path.suffix == ".conll" or _token_per_line(lines):
        return "columns"
    try:
        return "jsonl" if isinstance(json.loads(first), (dict, list)) else "text"
    except ValueError:
        return "text"


def _token_per_line(lines: list[str]) -> bool:
    """True for CoNLL-like text: posts of several lines between blank lines, each line a token and maybe
    tab-separated tags; a post per line has no such blocks (or words separated by spaces)."""
    filled = [line for line in lines if line.strip()]
    blocks = "\n".join(line.strip() and "x" for line in lines).split("\n\n")
    if not filled or not any(b.count("x") > 1 for b in blocks) or len(blocks) < 2:
        return False
    columns = sum("\t" in line for line in filled)
    single = sum(len(line.split()) == 1 for line in filled)
    return columns >= 0.5 * len(filled) or single >= 0.9 * len(filled)


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """The format an output path (or fmt) names: .jsonl/.json, .txt/.conll, or a folder (no suffix) for CCKS;
    a peer's format only when asked for (fmt)."""
    path = Path(path)
    if fmt is not None:
        if fmt not in OUTPUT_FORMATS:
            raise DataError(f"unknown format {fmt!r} (one of {', '.join(OUTPUT_FORMATS)})", path)
        return fmt
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix in (".txt", ".conll"):
        return "twitter"
    if not path.suffix or path.is_dir():
        return "ccks"
    raise DataError(
        f"cannot tell the output format from {path.suffix!r}: use .jsonl, .txt, a folder for CCKS, or --to", path
    )


def save_samples(samples: list[Sample], path: str | Path, fmt: str | None = None, overwrite: bool = True) -> None:
    """Write samples in the format the path (or fmt) names; overwrite=False refuses to replace existing files."""
    path = Path(path)
    fmt = output_format(path, fmt)
    if fmt not in ("twitter", "ccks") and path.exists() and not overwrite:
        raise DataError("would overwrite an existing file; give --overwrite to replace it", path)
    if fmt == "jsonl":
        write_jsonl(samples, path)
    elif fmt == "twitter":
        write_twitter(samples, path, overwrite)
    elif fmt == "ccks":
        write_ccks(samples, path, overwrite)
    elif fmt in ("unco", "unco-pred"):
        write_unco(samples, path, predictions=fmt == "unco-pred")
    elif fmt == "ccks-json":
        write_ccks_json(samples, path)
    else:
        write_riveg(samples, path)


__all__ = [
    "Dataset",
    "FORMATS",
    "detect_format",
    "iter_samples",
    "load_predictions",
    "pick_ids",
    "load_dataset",
    "load_samples",
    "load_unlabeled",
    "read_ids",
    "output_format",
    "read_predictions",
    "save_samples",
]
