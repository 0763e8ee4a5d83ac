"""An LSTM text classifier whose encoder matches :class:`LSTMLanguageModel` (same module paths
``embedding`` and ``lstm``), so stages of the language model and the classifier compare directly."""

from __future__ import annotations

import torch
from torch import nn

from .lstm_lm import LSTMLanguageModel


class LSTMClassifier(nn.Module):
    """Embedding → LSTM → mean over real positions → linear head; ``forward(input_ids,
    attention_mask=None) -> logits [B, n_labels]``."""

    def __init__(self, vocab_size: int, n_labels: int, emb_dim: int = 100, hidden: int = 100,
                 layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        self.lstm = nn.LSTM(emb_dim, hidden, layers, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_labels)

    @classmethod
    def from_language_model(cls, lm: LSTMLanguageModel, n_labels: int,
                            dropout: float = 0.0) -> "LSTMClassifier":
        c = lm.config
        clf = cls(c["vocab_size"], n_labels, c["emb_dim"], c["hidden"], c["layers"], dropout)
        clf.embedding.load_state_dict(lm.embedding.state_dict())
        clf.lstm.load_state_dict(lm.lstm.state_dict())
        return clf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        out, _ = self.lstm(self.embedding(input_ids))
        if attention_mask is None:
            pooled = out.mean(dim=1)
        else:
            m = attention_mask.unsqueeze(-1).to(out.dtype)
            pooled = (out * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return self.head(self.drop(pooled))
