"""Stop requests from SIGTERM / SIGINT, honoured at the next step boundary.

How to use::

    stop = StopRequest()
    with stop.installed():
        ...                       # the loop checks ``stop.requested``; a second Ctrl-C raises KeyboardInterrupt

A cluster scheduler sends SIGTERM before pre-emption: the trainer then saves a checkpoint at the next step
boundary and exits 0, so ``--resume_from_checkpoint latest`` continues without lost work.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

logger = logging.getLogger(__name__)

__all__ = ["StopRequest"]


class StopRequest:
    """The signal this process received (None until one arrives)."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _on_signal(self, signum, _frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum
        logger.warning("received %s: saving a checkpoint at the next step boundary, then exiting",
                       signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGTERM and SIGINT while inside the block; the previous handlers come back on exit."""
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
