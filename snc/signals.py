"""SIGTERM and SIGHUP handled like Ctrl-C: whatever runs is stopped on the way out (Lava's processes included).
The first of these signals starts the way out; later ones are ignored so that they cannot cut the teardown
short (which would leave processes and shared memory behind and print a traceback)."""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (a BaseException, like KeyboardInterrupt: ``except Exception`` lets it pass)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def terminating_signals() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM / SIGHUP raise ``Terminated`` in the main
    thread, so ``finally`` blocks and context managers stop what runs; the caller exits with 128 + the signal.
    From the first such signal on, all three are ignored until the process exits: the teardown (bounded by
    its own timeouts) runs to its end however often Ctrl-C is pressed."""
    arrived: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        for s in STOPPING:
            signal.signal(s, signal.SIG_IGN)
        arrived.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in STOPPING}
    try:
        yield
    finally:
        if not arrived:  # after a signal the process is on its way out: keep ignoring them
            for s, h in previous.items():
                signal.signal(s, h)
