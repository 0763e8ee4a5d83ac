"""Feature streams and their vocabularies.

Names load on first use: a store's reader needs ``Vocabulary`` only, without torch.
"""

from ..lazy import lazy_exports

_LAZY = {"Batch": ".streams", "Stream": ".streams", "label_stream": ".streams",
         "pos_stream": ".streams", "predicted_stream": ".streams", "stream_features": ".streams",
         "token_stream": ".streams", "Vocabulary": ".vocab"}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
