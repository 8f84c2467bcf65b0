"""Logging set-up. Library code only calls ``logging.getLogger(__name__)``; the CLI calls
:func:`setup_logging` once per process."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(rank: int | None = None, level: int = logging.INFO) -> None:
    """Configure the ``wfvae`` logger (not the root logger).

    Non-main ranks log WARNING and above; every line carries the rank.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    logger = logging.getLogger("wfvae")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logger.addHandler(handler)
    logger.setLevel(level if rank == 0 else logging.WARNING)
    logger.propagate = False
