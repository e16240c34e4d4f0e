"""Log lines as operators read them: ``[WARN] Failed to load plugin 'x.py': <reason>``.

One event is one line. Text a plugin or an entry controls (an error message, a log message on
its way to a text sink) goes through :func:`one_line` first, so it cannot end the line and
forge another (``\\n[ERROR] ...``), rewrite it (``\\r``) or send terminal escapes (``\\x1b[2J``):
CR, LF and the other control characters are shown as escapes instead. The formatter of
:func:`setup_logging` does the same to every record, whoever logs it.

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


def add_secret_text(secret: str) -> None:
    """Mask ``secret`` (a token from the config) in every log line."""
    if secret:
        _secrets.add(secret)


def redact(text: str) -> str:
    """``text`` with every registered secret masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


_CONTROL = (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
"""C0, DEL, C1 (NEL and the 8-bit CSI among them), and Unicode's line and paragraph separators."""
_SHORT = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES = {code: _SHORT.get(code) or f"\\x{code:02x}" for code in _CONTROL if code < 0x100}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _CONTROL if code >= 0x7F}


def one_line(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\r``, ``\\t``, ``\\x1b``,
    ``\\u2028``): one line on a terminal or in a file, however it was made. Backslashes are
    left alone, so ordinary text (Windows paths) reads as before."""
    if text.isprintable():  # the common case, and every character escaped is unprintable
        return text
    return text.translate(_ESCAPES)


def one_line_json(text: str) -> str:
    """A JSON text made safe for a terminal without changing what it means: JSON escapes the C0
    controls already; DEL, C1 and U+2028/U+2029 become ``\\uXXXX`` escapes too."""
    if text.isascii() and "\x7f" not in text:
        return text
    return text.translate(_JSON_ESCAPES)


class SafeFormatter(logging.Formatter):
    """``[LEVEL] message``: secrets masked, the whole record on one line (tracebacks escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(redact(super().format(record)))


def setup_logging(level: str | None = None) -> None:
    """One line per event on stderr, tagged with the level in brackets. LOG_LEVEL overrides."""
    logging.addLevelName(logging.WARNING, "WARN")
    chosen = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("[%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(chosen)
