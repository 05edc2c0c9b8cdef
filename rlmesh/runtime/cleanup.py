"""Stop every container this process owns on every exit path we can observe.

Each started container gets a :func:`weakref.finalize` tied to its session object, which covers
``close()``, garbage collection and normal interpreter exit. SIGTERM (which would otherwise kill
the process without running exit handlers) is turned into the same cleanup. SIGKILL cannot be
observed from inside: there this process's container watcher (:mod:`rlmesh.runtime.watcher`,
started with the first owned container) removes the containers. Should the watcher be gone
too, the sandboxed server stops itself when heartbeats stop, and
:func:`~rlmesh.runtime.reaper.reap_orphans` removes what is left.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from typing import Any

from rlmesh.runtime.driver import RuntimeDriver
from rlmesh.runtime.watcher import watch

__all__ = ["own_container", "watch"]

log = logging.getLogger(__name__)

_finalizers: set[weakref.finalize[Any, Any]] = set()
_lock = threading.RLock()
_signal_installed = False


def _stop(driver: RuntimeDriver, container_id: str) -> None:
    try:
        driver.stop(container_id, timeout=2.0)
        log.debug("stopped container %s", container_id[:12])
    except Exception as exc:  # cleanup runs at exit: report, never raise
        log.warning("could not stop container %s: %s", container_id[:12], exc)


def own_container(owner: object, driver: RuntimeDriver, container_id: str) -> weakref.finalize[Any, Any]:
    """Tie the container's lifetime to ``owner``; call the returned finalizer to stop it now.

    Also makes sure this process's container watcher knows ``driver`` (see :func:`watch`,
    which callers may call before :meth:`RuntimeDriver.run` already, to cover the start too).
    """
    finalizer = weakref.finalize(owner, _stop, driver, container_id)
    with _lock:
        _finalizers.add(finalizer)
        _finalizers.difference_update({f for f in _finalizers if not f.alive})
    _install_sigterm_handler()
    watch(driver)
    return finalizer


def stop_all() -> None:
    """Stop every container still owned by this process."""
    with _lock:
        pending = list(_finalizers)
        _finalizers.clear()
    for finalizer in pending:
        finalizer()


def _on_sigterm(signum: int, frame: Any) -> None:
    stop_all()
    # Then die of SIGTERM as we would have without us, so exit statuses stay truthful.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    global _signal_installed
    if _signal_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
    _signal_installed = True
