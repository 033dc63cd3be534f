"""The tagger network: any Hugging Face encoder, word-shape embeddings, an optional BiLSTM and a CRF."""

from __future__ import annotations

import torch
from torch import nn
from torchcrf import CRF

from .align import EncodedBatch
from .crf import FORBIDDEN, bio_constraints, enforce
from .features import N_FEATURES


class TaggerModel(nn.Module):
    """Encoder -> first sub-token of each word ++ shape embedding -> [BiLSTM] -> emissions -> CRF."""

    def __init__(
        self,
        encoder: nn.Module,
        labels: list[str],
        shape_dim: int = 32,
        lstm_hidden: int = 128,
        dropout: float = 0.2,
        shape_input: bool = True,
        n_prior: int = 0,
        prior_dim: int = 16,
    ):
        super().__init__()
        self.encoder = encoder
        self.labels = list(labels)
        hidden = encoder.config.hidden_size
        # Casing fed into the input embeddings, so the encoder contextualises it; zero-initialised
        # so training starts from the pretrained model unchanged.
        self.shape_in = nn.Embedding(N_FEATURES, hidden, padding_idx=0) if shape_input else None
        if self.shape_in is not None:
            nn.init.zeros_(self.shape_in.weight)
        self.shape_emb = nn.Embedding(N_FEATURES, shape_dim, padding_idx=0) if shape_dim else None
        self.dropout = nn.Dropout(dropout)
        self.prior_emb = nn.Embedding(n_prior, prior_dim, padding_idx=0) if n_prior else None
        width = hidden + shape_dim + (prior_dim if n_prior else 0)
        self.lstm = nn.LSTM(width, lstm_hidden, batch_first=True, bidirectional=True) if lstm_hidden else None
        self.emit = nn.Linear(2 * lstm_hidden if lstm_hidden else width, len(labels))
        self.crf = CRF(len(labels), batch_first=True)
        start_mask, trans_mask = bio_constraints(self.labels)
        self.register_buffer("start_mask", start_mask, persistent=False)
        self.register_buffer("trans_mask", trans_mask, persistent=False)
        self.enforce_bio()

    def enforce_bio(self) -> None:
        """Forbid ill-formed BIO moves (an I-X after O or after another type)."""
        enforce(self.crf, self.start_mask, self.trans_mask)

    def emissions(self, batch: EncodedBatch) -> torch.Tensor:
        """Per-word tag scores (B, W, K)."""
        t = batch.tensors()
        x = self.dropout(
            self.word_features(t.input_ids, t.attention_mask, t.sub_shape_ids, t.first_index, t.shape_ids, t.prior_ids)
        )
        if self.lstm is not None:
            lengths = t.word_mask.sum(1).clamp(min=1)
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            x, _ = self.lstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=t.word_mask.size(1))
            x = self.dropout(x)
        return self.emit(x)

    def word_features(
        self, input_ids, attention_mask, sub_shape_ids, first_index, shape_ids, prior_ids
    ) -> torch.Tensor:
        """Each word's vector before the BiLSTM: its first sub-token's encoding ++ shape ++ prior embeddings."""
        if self.shape_in is not None:
            embeds = self.encoder.get_input_embeddings()(input_ids) + self.shape_in(sub_shape_ids)
            out = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        else:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        words = torch.gather(out, 1, first_index.unsqueeze(-1).expand(-1, -1, out.size(-1)))
        if self.shape_emb is not None:
            words = torch.cat([words, self.shape_emb(shape_ids)], dim=-1)
        if self.prior_emb is not None:
            words = torch.cat([words, self.prior_emb(prior_ids)], dim=-1)
        return words

    def loss(
        self,
        batch: EncodedBatch,
        tags: torch.Tensor,
        weights: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean negative log-likelihood of the tags, each sentence weighted (pseudo-labels count less than gold).

        With ``allowed`` (B, W, K), a partly labelled batch: the likelihood is that of every tag path the mask
        allows (a word whose tag is unknown allows several), so the CRF marginalises over the unknown words.
        """
        emissions, mask = self.emissions(batch), torch.from_numpy(batch.word_mask)
        if allowed is None:
            llh = self.crf(emissions, tags, mask=mask, reduction="none")
        else:
            llh = self._log_partition(emissions.masked_fill(~allowed, FORBIDDEN), mask) - self._log_partition(
                emissions, mask
            )
        return -(llh if weights is None else llh * weights.to(llh.dtype)).mean()

    def _log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # pytorch-crf's forward algorithm (time-major); the package is frozen at 0.7.2, so its private API is stable
        return self.crf._compute_normalizer(emissions.transpose(0, 1), mask.transpose(0, 1))
