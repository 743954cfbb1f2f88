"""SIGTERM handled as Ctrl-C: `ray job stop`, `kill` or a batch system ending the job stop a
campaign as Ctrl-C does (the runs in progress recorded interrupted, exit 130, rerun to
resume) rather than with Ray's stack dump and the runs left `running`.

Imports no Ray: the CLI sets it up before planning, so SIGTERM then is one line too.
"""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """For the block, SIGTERM raises KeyboardInterrupt; the handler before it comes back after.
    Outside the main thread no handler can be set, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def interrupt_main() -> None:
    """Stop the main thread as SIGTERM would, where SIGTERM interrupts it."""
    if signal.getsignal(signal.SIGTERM) is _interrupt:
        _thread.interrupt_main(signal.SIGTERM)
