"""Output checks (design §7.4): every plugin result is checked against its type's contract
before anything uses it.

========  =============================================================================
type      a result it may give
========  =============================================================================
filter    ``True`` (keep) or ``False`` (drop); nothing else, not even ``1`` or ``None``
sink      an ``int``: ``0`` delivered, any other a delivery that failed (retried)
ai        a JSON object (a ``dict`` orjson encodes, string keys) of at most
          :data:`AI_RESULT_MAX_BYTES` as JSON; ``None`` (or ``{}``) says "nothing to
          report"; every streamed partial result is held to the same rules
lang      a ``str`` of at most :data:`LANG_RESULT_MAX_BYTES` in UTF-8; ``None`` for a key
          the plugin does not know (``NULL`` from a C plugin, CONTRACT §4)
========  =============================================================================

Any other answer is a plugin error, exactly like an exception: the entry goes to its stage's DLQ
with the reason (``returned str, a filter must return bool``), and the result goes nowhere. The
errors a plugin reports are output too: they reach the DLQ, log lines and ``plugins list``, so
they are made one line (:func:`pipeline.log.one_line`) and cut to :data:`ERROR_MAX_CHARS`.

:class:`~pipeline.health.GuardedPlugin` applies :func:`screen` to every batch of every runtime;
the ai jobs (:mod:`pipeline.ai`), which stream results past it, use :func:`encode_ai_result`.
The common case costs C-level passes over the batch only (~10–20 ns an entry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from pipeline.log import one_line
from pipeline.plugin import Failure

AI_RESULT_MAX_BYTES = 64 * 1024
"""The most an ai result (or one partial result) may take as JSON in ``logloom:ai:results``."""
LANG_RESULT_MAX_BYTES = 16 * 1024
"""The most a lang plugin's resolved text may take, in UTF-8 bytes."""
ERROR_MAX_CHARS = 1000
"""A plugin's error text is cut to this many characters (then ``...``) before it is used."""


class BadOutput(ValueError):
    """A result its plugin type does not allow; the message says what is wrong with it."""


def type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


def encode_ai_result(result: Any) -> bytes:
    """An ai result as the JSON that goes to the results stream; BadOutput if it may not."""
    if not isinstance(result, dict):
        raise BadOutput(
            f"returned {type_name(result)}, an ai plugin must return a JSON object (dict)"
        )
    try:
        data = orjson.dumps(result)
    except orjson.JSONEncodeError as exc:
        raise BadOutput(f"returned a dict that is not JSON: {exc}") from None
    if len(data) > AI_RESULT_MAX_BYTES:
        raise BadOutput(
            f"returned {len(data)} bytes of JSON, over the {AI_RESULT_MAX_BYTES}-byte limit "
            "of an ai result"
        )
    return data


def _filter(result: Any) -> str | None:
    if result is True or result is False:
        return None
    return f"returned {type_name(result)}, a filter must return bool"


def _sink(result: Any) -> str | None:
    if type(result) is not int:
        return f"returned {type_name(result)}, a sink must return int (0 = delivered)"
    return None if result == 0 else f"returned {result}, expected 0"


def _ai(result: Any) -> str | None:
    if result is None:
        return None
    try:
        encode_ai_result(result)
    except BadOutput as exc:
        return str(exc)
    return None


def _lang(result: Any) -> str | None:
    if result is None:
        return None
    if type(result) is not str:
        return f"returned {type_name(result)}, a lang plugin must return str"
    size = len(result) if result.isascii() else len(result.encode("utf-8", "surrogatepass"))
    if size > LANG_RESULT_MAX_BYTES:
        return (
            f"returned {size} bytes of text, over the {LANG_RESULT_MAX_BYTES}-byte limit "
            "of a lang result"
        )
    return None


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "filter": _filter,
    "sink": _sink,
    "ai": _ai,
    "lang": _lang,
}


def check(result: Any, plugin_type: str) -> str | None:
    """What is wrong with ``result`` (not a Failure) from a plugin of ``plugin_type``; None if
    nothing: it is a result that type may give."""
    return _CHECKS[plugin_type](result)


def clean_error(error: str) -> str:
    """A plugin's error text as it may be shown: one line, at most :data:`ERROR_MAX_CHARS`."""
    if len(error) > ERROR_MAX_CHARS:
        error = error[: ERROR_MAX_CHARS - 3] + "..."
    return one_line(error)


def _all_fine(results: list[Any], plugin_type: str) -> bool:
    """The fast path: every result is a good one, found with C-level passes only. For a
    filter, every result's type is bool; for a sink, every result is an int equal to 0."""
    count = len(results)
    if plugin_type == "filter":
        return list(map(type, results)).count(bool) == count
    if plugin_type == "sink":
        # Types first: ``count(0)`` compares, and only an int is safe to compare with.
        return list(map(type, results)).count(int) == count and results.count(0) == count
    return False


def screen(results: list[Any], plugin_type: str) -> tuple[list[Any], list[Failure]]:
    """``results`` with every answer its type does not allow turned into a Failure saying what
    is wrong, and every Failure's error made safe to show (:func:`clean_error`); and the
    Failures among them. When all is well, the common case, that is the same list and no
    Failures, for ~10–20 ns an entry."""
    if _all_fine(results, plugin_type):
        return results, []
    checker = _CHECKS[plugin_type]
    screened: list[Any] = []
    failures: list[Failure] = []
    for result in results:
        if isinstance(result, Failure):
            error = result.error
            if type(error) is not str:  # a runtime's bug, but never a crash here
                result = Failure(clean_error(str(error)), result.unavailable)
            elif len(error) > ERROR_MAX_CHARS or not error.isprintable():
                result = Failure(clean_error(error), result.unavailable)
            failures.append(result)
        else:
            problem = checker(result)
            if problem is not None:
                result = Failure(one_line(problem))
                failures.append(result)
        screened.append(result)
    return screened, failures
