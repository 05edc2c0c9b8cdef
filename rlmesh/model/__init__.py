"""Models: run a policy's episodes against any env and collect the results."""

from rlmesh.model.results import EpisodeResult, LatencyStats, RunResult
from rlmesh.model.runner import Model, ModelBase, ModelSpec

__all__ = ["Model", "ModelBase", "ModelSpec", "RunResult", "EpisodeResult", "LatencyStats"]
