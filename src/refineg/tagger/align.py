"""Words to sub-tokens: encode a batch of word lists and remember each word's first sub-token."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch


@dataclass
class EncodedBatch:
    """Tensors for one batch: sub-token inputs, each word's first sub-token index and a word mask."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    first_index: torch.Tensor  # (batch, max_words): sub-token position of each word's first piece
    word_mask: torch.Tensor  # (batch, max_words): True where the word exists and was not truncated
    shape_ids: torch.Tensor  # (batch, max_words)
    sub_shape_ids: torch.Tensor  # (batch, sub-tokens): each piece carries its word's shape id, 0 for specials
    prior_ids: torch.Tensor  # (batch, max_words): prior NER feature ids, 0 when unused


class Aligner:
    """Encodes word lists for one tokenizer; words that vanish in tokenisation become the unknown token."""

    def __init__(self, tokenizer, max_subtokens: int = 192):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the tagger needs a fast tokenizer (word_ids)")
        self.tokenizer = tokenizer
        self.max_subtokens = max_subtokens
        self._pieces = lru_cache(maxsize=200_000)(self._n_pieces)

    def _n_pieces(self, word: str) -> int:
        return len(self.tokenizer.tokenize(word))

    def n_subtokens(self, words: Sequence[str]) -> int:
        """How many sub-tokens the words become (specials excluded)."""
        return sum(self._pieces(w) or 1 for w in words)

    def clean(self, words: Sequence[str]) -> list[str]:
        """The words with any that the tokenizer drops entirely (e.g. a lone variation selector) replaced."""
        unk = self.tokenizer.unk_token or "[UNK]"
        return [w if w.strip() and self._pieces(w) else unk for w in words]

    def encode(self, batch_words: Sequence[Sequence[str]], batch_shapes: Sequence[Sequence[int]],
               batch_prior: Sequence[Sequence[int]] | None = None) -> EncodedBatch:
        """Tensors for a batch of word lists."""
        cleaned = [self.clean(ws) for ws in batch_words]
        enc = self.tokenizer(cleaned, is_split_into_words=True, truncation=True, max_length=self.max_subtokens,
                             padding=True, return_tensors="pt")
        n_words = max(1, max(len(ws) for ws in batch_words))
        first = torch.zeros(len(batch_words), n_words, dtype=torch.long)
        mask = torch.zeros(len(batch_words), n_words, dtype=torch.bool)
        shapes = torch.zeros(len(batch_words), n_words, dtype=torch.long)
        prior = torch.zeros(len(batch_words), n_words, dtype=torch.long)
        sub_shapes = torch.zeros_like(enc["input_ids"])
        for b in range(len(batch_words)):
            seen = set()
            for pos, w in enumerate(enc.word_ids(b)):
                if w is None:
                    continue
                sub_shapes[b, pos] = batch_shapes[b][w]
                if w not in seen:
                    seen.add(w)
                    first[b, w] = pos
                    mask[b, w] = True
            shapes[b, : len(batch_shapes[b])] = torch.tensor(batch_shapes[b], dtype=torch.long)
            if batch_prior is not None:
                prior[b, : len(batch_prior[b])] = torch.tensor(batch_prior[b], dtype=torch.long)
        return EncodedBatch(enc["input_ids"], enc["attention_mask"], first, mask, shapes, sub_shapes, prior)
