"""Steps that Ctrl-C must not part: a message and the bookkeeping that says it went out.

Python raises ``KeyboardInterrupt`` in the main thread, between any two calls. Where a request
is sent and then taken off a queue, an interrupt between the two would make it go out twice (or,
taken off first, never). :func:`held` keeps the interrupt back until such a block is done, then
raises it as usual. Use it only around steps that cannot block for long: Ctrl-C waits for them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["held"]


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT back while the block runs; deliver it to the previous handler afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach Python handlers in the main thread only: nothing to hold here
        return
    caught: list[tuple[int, FrameType | None]] = []
    previous: Any = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # ignored, default, or set outside Python: nothing raises mid-block
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            previous(*caught[0])
