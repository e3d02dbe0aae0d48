"""SIGINT / SIGTERM during training: finish the step, write a checkpoint, exit cleanly.

:class:`StopRequest` installs handlers for both signals that only record the request (and say on
stderr that it was heard); the training loop checks it after every step, writes a checkpoint and
returns, and the command line exits with 128 + the signal's number. A second Ctrl-C while the step
or the checkpoint is still under way stops at once (KeyboardInterrupt), as a user pressing it twice
expects; the previous checkpoint is then the one to resume from. The handlers are put back as they
were on exit, so a program that calls ``pyalexnet.train.main`` keeps its own.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

__all__ = ["StopRequest"]


class StopRequest:
    """Context manager: ``signum`` is the first SIGINT/SIGTERM received inside it (None if none)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.signum: Optional[int] = None
        self.announce = announce
        self._previous: dict = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum
            if self.announce:
                print(f"\n{signal.Signals(signum).name}: finishing the current step, then writing a checkpoint "
                      "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
