"""Small models the engine ships for demos and tests (no download needed)."""

from .lstm_classifier import LSTMClassifier
from .lstm_lm import LSTMLanguageModel

__all__ = ["LSTMClassifier", "LSTMLanguageModel"]
