"""Videos of a model's episodes: ``Model.run(..., record_video=DIR)`` writes one file per episode.

Frames are what the env's ``render()`` returns (it must render ``rgb_array`` frames): a vector
env renders all its lanes with one call per step, and each lane's frames go to the video of the
episode that lane is playing. Frames stream to the encoder as they come, so a long episode does
not pile up in memory. A video holds the episode's first frame (after its reset) and one per
step; in ``SameStep`` autoreset the final frame is gone before it could be rendered (the lane
has reset within the step), as in Gymnasium's ``RecordVideo``.

Needs the video extra (``pip install "rlmesh[video]"``, which brings ffmpeg through
``imageio-ffmpeg``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["VideoRecorder", "NoRecorder", "recorder_for"]

log = logging.getLogger(__name__)

VIDEO_EXTRA = 'pip install "rlmesh[video]"'


class NoRecorder:
    """What a run without ``record_video`` uses: every hook does nothing, nothing is rendered."""

    def frames(self) -> Sequence[Any] | None:
        return None

    def begin(self, lane: int, episode: int, frames: Sequence[Any] | None) -> None:
        pass

    def add(self, lane: int, frames: Sequence[Any] | None) -> None:
        pass

    def end(self, lane: int) -> None:
        pass

    def close(self) -> None:
        pass


class VideoRecorder(NoRecorder):
    """Streams each lane's frames into the video of the episode it plays.

    Args:
        folder: Where the videos go (created if missing): ``episode-<index>.mp4``, ``index``
            being the episode's index in the run (``EpisodeResult.index``).
        env: The env to render (a single env, or a vector env whose ``render()`` returns one
            frame per lane).
        vector: Whether ``env`` is a vector env.
        fps: Frames per second of the videos.
    """

    def __init__(self, folder: str | os.PathLike[str], env: Any, *, vector: bool, fps: float) -> None:
        try:
            import imageio_ffmpeg  # type: ignore[import-untyped]
        except ImportError:
            raise ImportError(f"record_video needs imageio-ffmpeg: {VIDEO_EXTRA}") from None
        self._ffmpeg = imageio_ffmpeg
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._env = env
        self._vector = vector
        self._fps = fps
        self._writers: dict[int, Any] = {}  # lane -> the encoder of its episode's video
        self._paths: dict[int, Path] = {}
        self.videos: dict[int, Path] = {}  # episode index -> its finished video

    def frames(self) -> Sequence[Any]:
        """Every lane's current frame, as NumPy arrays (one render request)."""
        from rlmesh.backends.numpy import BACKEND

        rendered = self._env.render()
        frames = list(rendered) if self._vector else [rendered]
        for lane, frame in enumerate(frames):
            if frame is None:
                raise ValueError(f"record_video: render() of lane {lane} returned no frame; make the env "
                                 "with render_mode='rgb_array'")
        return [BACKEND.convert(frame) for frame in frames]

    def begin(self, lane: int, episode: int, frames: Sequence[Any] | None) -> None:
        """Lane ``lane`` starts episode ``episode``; ``frames`` (from :meth:`frames`) holds its first frame."""
        self.end(lane)
        path = self.folder / f"episode-{episode}.mp4"
        first = _rgb(frames[lane] if frames is not None else self.frames()[lane], lane)
        height, width = first.shape[:2]
        # macro_block_size 2: odd sizes are padded by a pixel, which H.264's yuv420p needs.
        writer = self._ffmpeg.write_frames(str(path), (width, height), fps=self._fps, macro_block_size=2,
                                           ffmpeg_log_level="error")
        writer.send(None)  # start the encoder
        self._writers[lane], self._paths[lane] = writer, path
        self.videos[episode] = path
        writer.send(first)

    def add(self, lane: int, frames: Sequence[Any] | None) -> None:
        writer = self._writers.get(lane)
        if writer is not None and frames is not None:
            writer.send(_rgb(frames[lane], lane))

    def end(self, lane: int) -> None:
        writer = self._writers.pop(lane, None)
        if writer is not None:
            writer.close()
            log.info("wrote %s", self._paths.pop(lane))

    def close(self) -> None:
        for lane in list(self._writers):
            self.end(lane)


def _rgb(frame: Any, lane: int) -> Any:
    import numpy as np

    array = np.ascontiguousarray(frame)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"record_video needs rgb_array frames (height x width x 3, uint8); lane {lane} "
                         f"rendered {array.dtype} of shape {array.shape}")
    return array


def recorder_for(folder: str | os.PathLike[str] | None, env: Any, *, vector: bool) -> NoRecorder:
    """A :class:`VideoRecorder` for ``env`` if ``folder`` is given, else a :class:`NoRecorder`."""
    if folder is None:
        return NoRecorder()
    mode = getattr(env, "render_mode", None)
    if mode != "rgb_array":
        raise ValueError(f"record_video needs an env that renders rgb_array frames, but its render_mode is "
                         f"{mode!r}; make (or serve) it with render_mode='rgb_array'")
    fps = (getattr(env, "metadata", None) or {}).get("render_fps") or 30
    return VideoRecorder(folder, env, vector=vector, fps=float(fps))
