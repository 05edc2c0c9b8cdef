"""interrupts.held: Ctrl-C waits for the end of a block that must not be parted."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from rlmesh.protocol import interrupts


def test_ctrl_c_inside_a_held_block_is_raised_when_it_ends() -> None:
    before = signal.getsignal(signal.SIGINT)
    finished = []
    with pytest.raises(KeyboardInterrupt), interrupts.held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # unheld, the interrupt would land at this call
        finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_held_block_without_an_interrupt_leaves_the_handler_as_it_was() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interrupts.held():
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_other_threads_hold_nothing() -> None:
    """Signal handlers run in the main thread only; signal.signal would fail elsewhere."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with interrupts.held():
                pass
        except BaseException as error:  # noqa: BLE001 (whatever it is, the test reports it)
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors == []
