"""Measures: one stage (distributions, length, mass, entropy, top features, feature-group mass)
and comparisons of two stages (shared/dead neurons, Hellinger, length and mass shifts), all
vectorised over whole layers."""

from .compare import (Comparison, align_vocabularies, compare, compare_layers, compare_streams,
                      compat_hellinger)
from .stage import (activation_mass, alive, cells, distributions, entropy, feature_group_mass,
                    length, stage_table, top_features)
from .table import NeuronTable

__all__ = ["Comparison", "NeuronTable", "activation_mass", "align_vocabularies", "alive", "cells",
           "compare", "compare_layers", "compare_streams", "compat_hellinger", "distributions", "entropy",
           "feature_group_mass", "length", "stage_table", "top_features"]
