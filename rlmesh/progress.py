"""Progress display for long work (image builds, base-image bootstraps).

On a terminal: a live status line showing the latest output line. Elsewhere (CI, log files):
the title at INFO and each output line at DEBUG, so logs stay quiet unless asked.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_lines"]

log = logging.getLogger(__name__)


@contextmanager
def progress_lines(title: str, *, live: bool | None = None) -> Iterator[Callable[[str], None]]:
    """Yield a callback that takes one output line at a time while ``title`` work runs."""
    started = time.monotonic()
    if live is None:
        live = sys.stderr.isatty()
    log.info("%s ...", title)
    if not live:
        yield lambda line: log.debug("%s", line.rstrip())
        log.info("%s: done in %.1f s", title, time.monotonic() - started)
        return

    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    with console.status(escape(title)) as status:

        def update(line: str) -> None:
            text = line.strip()
            if text:
                status.update(f"{escape(title)} [dim]{escape(text[:100])}[/dim]")

        yield update
    console.print(f"[green]✓[/green] {escape(title)} ({time.monotonic() - started:.1f} s)")
