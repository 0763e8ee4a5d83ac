"""Feature streams and their vocabularies."""

from .streams import (Batch, Stream, label_stream, pos_stream, predicted_stream, stream_features,
                      token_stream)
from .vocab import Vocabulary

__all__ = ["Batch", "Stream", "Vocabulary", "label_stream", "pos_stream", "predicted_stream",
           "stream_features", "token_stream"]
