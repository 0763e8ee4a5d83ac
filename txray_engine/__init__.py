"""txray_engine: streaming neuron × feature statistics for neuron-level analysis (TX-Ray).

Data flows one way::

    capture (hooks) → select (top-k) → accumulate (exact sums) → store (Zarr) → measures → report/prune

Main entry points: :class:`Collector` (a model and batches), :class:`Accumulator` with
:meth:`Accumulator.observe` (activations you already have), :func:`open_store` (read results).
"""

from .accumulate import Accumulator, SparseStats, merge, same_sums
from .collect import Collector, Corpus, collect_corpus, load_model
from .errors import TxRayError
from .features import Batch, Stream, Vocabulary
from .store import StageWriter, open_store
from .version import FORMAT_VERSION, __version__

__all__ = ["Accumulator", "Batch", "Collector", "Corpus", "FORMAT_VERSION", "SparseStats",
           "StageWriter", "Stream", "TxRayError", "Vocabulary", "__version__", "collect_corpus",
           "load_model", "merge", "open_store", "same_sums"]
