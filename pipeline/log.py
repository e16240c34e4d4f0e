"""Log lines as operators read them: ``[WARN] Failed to load plugin 'x.py': <reason>``."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str | None = None) -> None:
    """One line per event on stderr, tagged with the level in brackets. LOG_LEVEL overrides."""
    logging.addLevelName(logging.WARNING, "WARN")
    chosen = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(chosen)
