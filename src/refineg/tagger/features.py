"""Word-shape features that give an uncased encoder its casing signal back.

Each word gets one id combining its shape, what precedes it (``#``, ``@`` or nothing) and whether
the whole post is upper- or title-cased (then capitalisation says little).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import ConfigError

SHAPES = (
    "lower",
    "capitalised",
    "allcaps",
    "mixed",
    "digits",
    "alnum_digits",
    "punct",
    "hash",
    "at",
    "url",
    "emoji_symbol",
    "rt",
    "single_upper",
    "other",
)
CONTEXTS = ("none", "after_hash", "after_at")
N_FEATURES = len(SHAPES) * len(CONTEXTS) * 2 + 1  # +1: padding id 0

_URL = re.compile(r"^(https?:|www\.|\w+\.co/|co/|t\.co)", re.I)


def word_shape(word: str) -> str:
    """The shape class of one word."""
    if word == "#":
        return "hash"
    if word == "@":
        return "at"
    if word == "RT":
        return "rt"
    if _URL.match(word):
        return "url"
    letters = [c for c in word if c.isalpha()]
    if not letters:
        if word.isdigit():
            return "digits"
        if all(not c.isalnum() for c in word):
            return "emoji_symbol" if any(ord(c) > 0x2000 for c in word) else "punct"
        return "other"
    if any(c.isdigit() for c in word):
        return "alnum_digits"
    if len(letters) == 1 and word[0].isupper():
        return "single_upper"
    if all(c.isupper() for c in letters):
        return "allcaps"
    if all(c.islower() for c in letters):
        return "lower"
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return "capitalised"
    return "mixed"


def is_shouting(words: Sequence[str]) -> bool:
    """True when most alphabetic words are all-caps or capitalised, so casing carries little signal."""
    alpha = [w for w in words if any(c.isalpha() for c in w) and len(w) > 1]
    if len(alpha) < 3:
        return False
    upperish = sum(1 for w in alpha if w[0].isupper())
    return upperish / len(alpha) >= 0.8


def shape_ids(words: Sequence[str]) -> list[int]:
    """One feature id (>= 1) per word."""
    shout = int(is_shouting(words))
    ids = []
    for i, word in enumerate(words):
        prev = words[i - 1] if i else ""
        ctx = 1 if prev == "#" else 2 if prev == "@" else 0
        ids.append(1 + (SHAPES.index(word_shape(word)) * len(CONTEXTS) + ctx) * 2 + shout)
    return ids


class PriorNER:
    """Entity tags from a cased spaCy NER model, as one feature id per word (0 padding, 1 outside).

    A pretrained cased NER knows casing and common names even when the encoder is uncased and the
    labelled data is small; the tagger learns how far to trust it.
    """

    memo_size = 50_000
    # Set by the CLI, which owns its process: spaCy is then imported without PyTorch (see _import_spacy).
    spacy_without_torch = False

    def __init__(self, model: str):
        spacy = _import_spacy(model, self.spacy_without_torch)
        try:
            self.nlp = spacy.load(model, exclude=["parser", "tagger", "lemmatizer", "attribute_ruler", "senter"])
        except OSError as exc:
            raise ConfigError(f"cannot load spaCy model {model!r}: {str(exc).splitlines()[0]}") from None
        if "ner" not in self.nlp.pipe_names:
            raise ConfigError(f"spaCy model {model!r} has no ner component")
        if "tok2vec" in self.nlp.pipe_names and "ner" not in getattr(
            self.nlp.get_pipe("tok2vec"), "listening_components", ["ner"]
        ):
            # The small English models' NER has its own tok2vec: the shared one would only cost time.
            self.nlp.remove_pipe("tok2vec")
        # Training tags dev every epoch: remembering sentences spares spaCy the same work each time.
        self._memo: dict[tuple[str, ...], list[int]] = {}
        self.labels = sorted(self.nlp.get_pipe("ner").labels)
        self._index = {lab: i for i, lab in enumerate(self.labels)}

    @property
    def n_ids(self) -> int:
        """Size of the id space, padding included."""
        return 2 + 2 * len(self.labels)

    def forget(self) -> None:
        """Drop the remembered sentences (benchmarks time spaCy on fresh input)."""
        self._memo.clear()

    def ids(self, batch_words: Sequence[Sequence[str]]) -> list[list[int]]:
        """Feature ids for each word of each word list (our tokenisation is kept)."""
        keys = [tuple(ws) for ws in batch_words]
        todo = list(dict.fromkeys(k for k in keys if k not in self._memo))
        if len(self._memo) + len(todo) > self.memo_size:
            self._memo.clear()
        if todo:
            self._memo.update(zip(todo, self._tag(todo)))
        return [self._memo[k] for k in keys]

    max_words = 512  # per call: words past this get "outside" (the tagger tags long posts in shorter windows)

    def _tag(self, batch_words: Sequence[Sequence[str]]) -> list[list[int]]:
        from spacy.tokens import Doc

        docs = self.nlp.pipe(
            (Doc(self.nlp.vocab, words=[w if w.strip() else "_" for w in ws[: self.max_words]]) for ws in batch_words),
            batch_size=256,
        )
        return [
            [1 if not t.ent_type_ else 2 + 2 * self._index[t.ent_type_] + (t.ent_iob_ == "I") for t in doc]
            + [1] * max(0, len(ws) - self.max_words)
            for doc, ws in zip(docs, batch_words)
        ]


def _import_spacy(model: str, without_torch: bool):
    """spaCy; with without_torch, imported so that thinc does not import PyTorch (1-1.7 s of a predict run's start).

    thinc imports PyTorch whenever it is installed, for PyTorch-backed pipelines only; a CNN model like
    en_core_web_sm never uses it. Hiding PyTorch makes thinc run without it for the rest of the process,
    so this is done only when spaCy and PyTorch are not loaded yet and the model needs no transformers.
    """
    import importlib.metadata
    import sys

    hide = without_torch and "torch" not in sys.modules and "spacy" not in sys.modules
    try:
        hide = hide and not any("transformers" in r for r in importlib.metadata.requires(model) or ())
    except importlib.metadata.PackageNotFoundError:
        hide = False  # a model folder, not a package: its needs are unknown
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` now raises ImportError
    try:
        import spacy
    except ImportError:
        raise ConfigError("prior_ner needs spaCy (pip install spacy)") from None
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return spacy
