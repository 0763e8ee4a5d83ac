"""Collect: run models over corpora and feed the accumulator (Python API and the CLI job)."""

from .collector import Collector, default_forward, output_logits
from .corpus import Corpus, Document
from .models import LoadedModel, load_model, model_identity
from .run import collect_corpus

__all__ = ["Collector", "Corpus", "Document", "LoadedModel", "collect_corpus", "default_forward",
           "load_model", "model_identity", "output_logits"]
