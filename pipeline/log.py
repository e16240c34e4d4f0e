"""Log lines as operators read them: ``[WARN] Failed to load plugin 'x.py': <reason>``.

Secrets (the Redis password) never appear: :func:`redact_url` shows a URL as
``rediss://alice:***@host:6380/0``, and every secret registered with :func:`add_secret` is
masked in every log line from then on.
"""

from __future__ import annotations

import logging
import os
import sys
from urllib.parse import SplitResult, unquote, urlsplit

MASK = "***"
_secrets: set[str] = set()


def join_url(parts: SplitResult) -> str:
    """:func:`urllib.parse.urlunsplit` that keeps the ``//`` of ``unix://`` URLs too."""
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if parts.query:
        url += f"?{parts.query}"
    if parts.fragment:
        url += f"#{parts.fragment}"
    return url


def redact_url(url: str | None) -> str:
    """``url`` with its password, if it has one, shown as ``***``."""
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return redact(url)
    query = parts.query
    if "password=" in query:  # redis-py takes ?password=... too
        query = "&".join(
            f"password={MASK}" if pair.startswith("password=") else pair
            for pair in query.split("&")
        )
    netloc = parts.netloc
    if password is not None:
        user = parts.username or ""
        netloc = f"{user}:{MASK}@{netloc.rpartition('@')[2]}"
    return join_url(parts._replace(netloc=netloc, query=query))


def add_secret(url: str | None) -> None:
    """Mask the password of ``url`` (as written and percent-decoded) in every log line."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        return
    found += [pair[len("password=") :] for pair in parts.query.split("&")
              if pair.startswith("password=")]  # fmt: skip
    for password in found:
        _secrets.update({password, unquote(password)} - {""})


def redact(text: str) -> str:
    """``text`` with every registered secret masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class SafeFormatter(logging.Formatter):
    """``[LEVEL] message`` with every registered secret masked (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str | None = None) -> None:
    """One line per event on stderr, tagged with the level in brackets. LOG_LEVEL overrides."""
    logging.addLevelName(logging.WARNING, "WARN")
    chosen = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("[%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(chosen)
