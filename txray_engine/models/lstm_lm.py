"""The TX-Ray paper's LSTM language model (one layer, 100-d embedding and state by default)."""

from __future__ import annotations

import torch
from torch import nn


class LSTMLanguageModel(nn.Module):
    """Embedding → LSTM → linear decoder; ``forward(input_ids [B, T]) -> logits [B, T, V]``.

    The LSTM's output (module path ``lstm``) is the layer TX-Ray analyses.
    """

    def __init__(self, vocab_size: int, emb_dim: int = 100, hidden: int = 100, layers: int = 1,
                 dropout: float = 0.0, batch_first: bool = True):
        super().__init__()
        self.config = {"vocab_size": vocab_size, "emb_dim": emb_dim, "hidden": hidden,
                       "layers": layers, "dropout": dropout, "batch_first": batch_first}
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        self.lstm = nn.LSTM(emb_dim, hidden, layers, batch_first=batch_first,
                            dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        x = self.embedding(input_ids if self.lstm.batch_first else input_ids.t())
        out, _ = self.lstm(self.drop(x))
        logits = self.decoder(self.drop(out))
        return logits if self.lstm.batch_first else logits.transpose(0, 1)
