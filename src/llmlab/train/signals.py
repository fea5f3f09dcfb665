"""Graceful stop: SIGTERM / SIGINT set a flag; the loop finishes its step, checkpoints and exits.

A second SIGINT (Ctrl-C twice) restores the default handler's behaviour and interrupts at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

# Exit codes of `llmlab train` (documented in `llmlab train --help` and the README).
EXIT_OK = 0
EXIT_DIVERGED = 3
"""A non-finite loss or gradient norm: stopped before the update; the last good checkpoint stays."""
EXIT_STOPPED = 75
"""Stopped by SIGTERM/SIGINT after checkpointing: run the same command again to resume
(75 = EX_TEMPFAIL in sysexits.h, "try again later")."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Installs the handlers on enter, restores the previous ones on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait
        self.signum = signum
        print(
            f"\nllmlab: {signal.Signals(signum).name} received: finishing this step, then checkpointing",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only delivers signals to the main thread; nothing to install
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
