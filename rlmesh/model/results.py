"""What a model evaluation reports: per-episode results, aggregates and latency telemetry."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EpisodeResult", "LatencyStats", "RunResult"]


@dataclass(frozen=True)
class EpisodeResult:
    """One evaluated episode.

    ``episode_return`` is the undiscounted sum of rewards. ``truncated`` is also set when the
    run's ``max_steps`` or ``max_seconds`` cut the episode short. ``success`` is what the env
    reported in ``info["is_success"]`` or ``info["success"]`` on the last step, else ``None``.
    """

    index: int
    seed: int | None
    steps: int
    episode_return: float
    terminated: bool
    truncated: bool
    success: bool | None = None
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "steps": self.steps,
            "return": self.episode_return,
            "terminated": self.terminated,
            "truncated": self.truncated,
            "success": self.success,
            "duration": self.duration,
        }


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (NumPy's default method)."""
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one kind of call, in milliseconds (``count == 0``: never called)."""

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        if not samples:
            return cls()
        ordered = sorted(s * 1000.0 for s in samples)
        return cls(len(ordered), sum(ordered) / len(ordered), _percentile(ordered, 50),
                   _percentile(ordered, 95), _percentile(ordered, 99))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "p50": self.p50, "p95": self.p95, "p99": self.p99}

    def __str__(self) -> str:
        return f"p50 {self.p50:.3f} / p95 {self.p95:.3f} / p99 {self.p99:.3f} ms"


@dataclass(frozen=True)
class RunResult:
    """The outcome of ``Model.run``: episodes in index order plus aggregates and telemetry.

    ``predict_latency`` times each policy call (one per batch for batched policies);
    ``step_latency`` times each env ``step`` call (one per batch for vector envs).
    """

    episodes: tuple[EpisodeResult, ...]
    predict_latency: LatencyStats = field(default_factory=LatencyStats)
    step_latency: LatencyStats = field(default_factory=LatencyStats)
    duration: float = 0.0
    env_steps: int = 0

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def total_steps(self) -> int:
        """Steps counted in episodes (reset steps and idle vector lanes excluded)."""
        return sum(e.steps for e in self.episodes)

    @property
    def returns(self) -> list[float]:
        return [e.episode_return for e in self.episodes]

    @property
    def mean_reward(self) -> float:
        """Mean episode return (0.0 when no episode ran)."""
        return sum(self.returns) / len(self.episodes) if self.episodes else 0.0

    @property
    def success_rate(self) -> float | None:
        """Fraction of successful episodes among those that reported success, else ``None``."""
        reported = [e.success for e in self.episodes if e.success is not None]
        return sum(reported) / len(reported) if reported else None

    @property
    def steps_per_second(self) -> float:
        """Env steps per second of wall time (vector envs: lanes times steps)."""
        return self.env_steps / self.duration if self.duration > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_episodes": self.num_episodes,
            "total_steps": self.total_steps,
            "mean_reward": self.mean_reward,
            "success_rate": self.success_rate,
            "duration": self.duration,
            "env_steps": self.env_steps,
            "steps_per_second": self.steps_per_second,
            "predict_latency_ms": self.predict_latency.to_dict(),
            "step_latency_ms": self.step_latency.to_dict(),
            "episodes": [e.to_dict() for e in self.episodes],
        }

    def to_json(self, **kwargs: Any) -> str:
        """``to_dict()`` as JSON; keyword arguments go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        success = "n/a" if self.success_rate is None else f"{self.success_rate:.1%}"
        return (f"RunResult(episodes={self.num_episodes}, steps={self.total_steps}, "
                f"mean_reward={self.mean_reward:.3f}, success_rate={success}, "
                f"predict {self.predict_latency}, step {self.step_latency}, "
                f"{self.duration:.2f} s)")
