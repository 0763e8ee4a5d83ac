"""Store: the Zarr hierarchy of stages (format v1, see docs/FORMAT.md)."""

from .merge import merge_stages
from .reader import LayerView, Stage, Store, StreamView, open_store
from .writer import StageWriter

__all__ = ["LayerView", "Stage", "StageWriter", "Store", "StreamView", "merge_stages",
           "open_store"]
