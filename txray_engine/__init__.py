"""txray_engine: streaming neuron × feature statistics for neuron-level analysis (TX-Ray).

Data flows one way::

    capture (hooks) → select (top-k) → accumulate (exact sums) → store (Zarr) → measures → report/prune

Main entry points: :class:`Collector` (a model and batches), :class:`Accumulator` with
:meth:`Accumulator.observe` (activations you already have), :func:`open_store` (read results).
"""

from .errors import (CorpusError, InputError, LayerNotFoundError, NonFiniteError, StageChangedError,
                     StageExistsError, StageNotReadyError, StoreError, StoreLockedError,
                     TxRayError)
from .lazy import lazy_exports
from .version import FORMAT_VERSION, __version__

# Loaded on first use: the store needs zarr and the collector the store, so the accumulators
# and kernels import on machines without zarr (e.g. a GPU benchmark image); and the command
# line starts without torch and the numba kernels (`txray --help` in a fraction of the time).
_LAZY = {"Accumulator": ".accumulate", "SparseStats": ".accumulate", "merge": ".accumulate",
         "same_sums": ".accumulate", "Batch": ".features", "Stream": ".features",
         "Vocabulary": ".features", "Collector": ".collect", "Corpus": ".collect",
         "collect_corpus": ".collect", "load_model": ".collect", "StageWriter": ".store",
         "open_store": ".store", "read_again": ".store"}

__all__ = ["Accumulator", "Batch", "Collector", "Corpus", "CorpusError", "FORMAT_VERSION",
           "InputError", "LayerNotFoundError", "NonFiniteError", "SparseStats", "StageChangedError",
           "StageExistsError", "StageNotReadyError", "StageWriter", "StoreError", "StoreLockedError",
           "Stream", "TxRayError", "Vocabulary", "__version__", "collect_corpus", "load_model",
           "merge", "open_store", "read_again", "same_sums"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
