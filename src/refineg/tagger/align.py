"""Words to sub-tokens: encode a batch of word lists and remember each word's first sub-token.

Tokenisation goes through the `tokenizers` library alone, so tagging with ONNX Runtime never imports
PyTorch or transformers (about 2.5 s of a predict run's start-up).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError


@dataclass
class EncodedBatch:
    """Arrays for one batch: sub-token inputs, each word's first sub-token index and a word mask."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    first_index: np.ndarray  # (batch, max_words): sub-token position of each word's first piece
    word_mask: np.ndarray  # (batch, max_words): True where the word exists and was not truncated
    shape_ids: np.ndarray  # (batch, max_words)
    sub_shape_ids: np.ndarray  # (batch, sub-tokens): each piece carries its word's shape id, 0 for specials
    prior_ids: np.ndarray  # (batch, max_words): prior NER feature ids, 0 when unused

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array by field name (the ONNX graph's input names)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def tensors(self) -> EncodedBatch:
        """The same batch as PyTorch tensors (shared memory)."""
        import torch

        return EncodedBatch(**{k: torch.from_numpy(v) for k, v in self.arrays().items()})


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class Pieces:
    """An encoder's fast word-piece tokenizer, through the `tokenizers` library."""

    def __init__(self, backend, unk_token: str, pad_id: int, source=None):
        self.backend = backend
        backend.no_padding()  # a saved tokenizer may pad to a fixed length: we pad ourselves
        self.unk_token = unk_token
        self.pad_id = pad_id
        self.source = source  # the transformers tokenizer or the folder it came from, for save()

    @classmethod
    def of(cls, tokenizer) -> Pieces:
        """The pieces of a transformers tokenizer (it must be a fast one: word alignment needs word ids)."""
        if isinstance(tokenizer, Pieces):
            return tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the tagger needs a fast tokenizer (word_ids)")
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # our own copy: we set truncation
        return cls(backend, tokenizer.unk_token or "[UNK]", tokenizer.pad_token_id or 0, tokenizer)

    @classmethod
    def load(cls, folder: Path) -> Pieces:
        """The tokenizer a model folder's encoder/ holds (tokenizer.json, special tokens from tokenizer_config.json)."""
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
            special = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except Exception as exc:  # tokenizers raises its own Exception type for a damaged file
            raise ConfigError(f"{folder}: tokenizer missing or damaged: {str(exc).splitlines()[0]}") from None

        def token(name: str, default: str) -> str:
            value = special.get(name) or default
            return value.get("content", default) if isinstance(value, dict) else str(value)

        pad = backend.token_to_id(token("pad_token", "[PAD]"))
        return cls(backend, token("unk_token", "[UNK]"), pad if pad is not None else 0, folder)

    def save(self, folder: Path) -> None:
        """Write the tokenizer files into folder (a model folder's encoder/)."""
        if isinstance(self.source, Path):
            import shutil

            for name in TOKENIZER_FILES:
                if (self.source / name).resolve() != (folder / name).resolve():
                    shutil.copyfile(self.source / name, folder / name)
        else:
            self.source.save_pretrained(folder)

    def pieces(self, word: str) -> int:
        """How many sub-tokens one word becomes."""
        return len(self.backend.encode(word, add_special_tokens=False).ids)

    def encode(self, words: Sequence[Sequence[str]], max_length: int):
        """One `tokenizers` Encoding per word list, specials added, truncated to max_length sub-tokens."""
        self.backend.enable_truncation(max_length=max_length)
        return self.backend.encode_batch([list(w) for w in words], is_pretokenized=True, add_special_tokens=True)


class Aligner:
    """Encodes word lists for one tokenizer; words that vanish in tokenisation become the unknown token."""

    def __init__(self, tokenizer, max_subtokens: int = 192):
        self.tokenizer = Pieces.of(tokenizer)
        self.max_subtokens = max_subtokens
        self._pieces = lru_cache(maxsize=200_000)(self.tokenizer.pieces)

    def n_subtokens(self, words: Sequence[str]) -> int:
        """How many sub-tokens the words become (specials excluded)."""
        return sum(self._pieces(w) or 1 for w in words)

    def clean(self, words: Sequence[str]) -> list[str]:
        """The words with any that the tokenizer drops entirely (e.g. a lone variation selector) replaced."""
        unk = self.tokenizer.unk_token
        return [w if w.strip() and self._pieces(w) else unk for w in words]

    def encode(
        self,
        batch_words: Sequence[Sequence[str]],
        batch_shapes: Sequence[Sequence[int]],
        batch_prior: Sequence[Sequence[int]] | None = None,
    ) -> EncodedBatch:
        """Arrays for a batch of word lists."""
        encodings = self.tokenizer.encode([self.clean(ws) for ws in batch_words], self.max_subtokens)
        n, n_words = len(batch_words), max(1, max(len(ws) for ws in batch_words))
        n_pieces = max(len(e.ids) for e in encodings)
        ids = np.full((n, n_pieces), self.tokenizer.pad_id, dtype=np.int64)
        attention = np.zeros((n, n_pieces), dtype=np.int64)
        sub_shapes = np.zeros((n, n_pieces), dtype=np.int64)
        first = np.zeros((n, n_words), dtype=np.int64)
        mask = np.zeros((n, n_words), dtype=bool)
        shapes = np.zeros((n, n_words), dtype=np.int64)
        prior = np.zeros((n, n_words), dtype=np.int64)
        for b, enc in enumerate(encodings):
            ids[b, : len(enc.ids)] = enc.ids
            attention[b, : len(enc.ids)] = 1
            for pos, w in enumerate(enc.word_ids):
                if w is None:
                    continue
                sub_shapes[b, pos] = batch_shapes[b][w]
                if not mask[b, w]:
                    first[b, w] = pos
                    mask[b, w] = True
            shapes[b, : len(batch_shapes[b])] = batch_shapes[b]
            if batch_prior is not None:
                prior[b, : len(batch_prior[b])] = batch_prior[b]
        return EncodedBatch(ids, attention, first, mask, shapes, sub_shapes, prior)
