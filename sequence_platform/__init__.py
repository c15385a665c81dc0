"""Per-user event sequences for ML: one definition, batch, real time and serving.

``read_sequences`` reads any sequence at any instant and ``training_set`` answers a spine of
labelled instants, by the same engine as the API.
"""

from sequence_platform.runtime.reads import read_sequences
from sequence_platform.runtime.training import TrainingSet, training_set

__all__ = ["TrainingSet", "read_sequences", "training_set"]
