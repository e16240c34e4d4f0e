"""POST batches of entries to an HTTP endpoint: a webhook, Loki, Elasticsearch, anything.

One request per flush over a kept-alive connection: NDJSON or a JSON array, optionally gzipped,
with the headers and auth of the config. Presets shape the body for Loki's push API
(``format: loki``) and Elasticsearch's bulk API (``format: elasticsearch``).

What an answer means:

* 2xx: delivered. For Elasticsearch the bulk answer is read item by item: an item throttled
  (429) or failed on the server (5xx) answers -2 for its entry (unavailable: the stage holds it
  and sends it again; an item already written is overwritten by its ``_id``); an item refused
  for good (a mapping error, 400) fails its entry alone with its status, and after
  ``sink.retry.max_attempts`` that entry is dead-lettered. When every refused item is of the
  first kind the plugin raises ``ConnectionError``, which says why in the log.
* 429, 5xx, no answer, a refused connection or a timeout: the destination is unavailable. The
  plugin raises ``ConnectionError``, so the sink stage holds the entries and retries them with
  backoff until it is back (they are never dead-lettered for it); a ``Retry-After`` is honoured
  by waiting that long (at most ``max_retry_after_s``) before the next request.
* any other 4xx: the request itself is refused (bad auth, a body the far side rejects): the
  entries fail, and after ``sink.retry.max_attempts`` they go to the DLQ with the status and the
  start of the answer.

Guarantee: at least once. Each entry carries its stream ID for deduplication: as the field
``id_field`` (default ``logloom_id``) in the JSON formats, as the document ``_id`` for
Elasticsearch (which makes a redelivery overwrite, not duplicate), not at all for Loki (which
drops a line identical in stream, time and text).
"""

import base64
import gzip
import http.client
import time
import urllib.parse
from email.utils import parsedate_to_datetime

import orjson

PLUGIN_INFO = {
    "name": "sink_http",
    "version": "1.0.0",
    "type": "sink",
    "capability": ["batch", "json", "gzip"],
    "author": "Logloom Team",
    "description": "HTTP endpoint (NDJSON, JSON array, Loki push, Elasticsearch bulk)",
}

settings = {
    "url": "http://127.0.0.1:8080/logs",
    "format": "ndjson",  # ndjson | json_array | loki | elasticsearch
    "gzip": False,
    "headers": {},
    "basic_auth": None,  # {"user": ..., "password": ...}
    "bearer_token": None,
    "timeout_s": 10,
    "max_retry_after_s": 60,
    "id_field": "logloom_id",  # null: send entries as they are
    "index": "logloom",  # elasticsearch
    "labels": {"job": "logloom"},  # loki: fixed labels; level and module are added per stream
}
state = {"connection": None, "not_before": 0.0}
UNAVAILABLE = -2  # an entry the destination cannot take now: the sink stage holds it
FORMATS = ("ndjson", "json_array", "loki", "elasticsearch")
CONTENT_TYPES = {
    "ndjson": "application/x-ndjson",
    "json_array": "application/json",
    "loki": "application/json",
    "elasticsearch": "application/x-ndjson",
}


def plugin_init(config):
    unknown = set(config) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings.update(config)
    if settings["format"] not in FORMATS:
        raise ValueError(f"format {settings['format']!r}: expected one of {', '.join(FORMATS)}")
    url = urllib.parse.urlsplit(settings["url"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"url {settings['url']!r}: expected http(s)://host[:port]/path")
    state["url"] = url
    state["not_before"] = 0.0
    return 0


def _headers():
    headers = {"Content-Type": CONTENT_TYPES[settings["format"]], "User-Agent": "logloom"}
    if settings["gzip"]:
        headers["Content-Encoding"] = "gzip"
    auth = settings["basic_auth"]
    if auth:
        token = base64.b64encode(f"{auth['user']}:{auth['password']}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif settings["bearer_token"]:
        headers["Authorization"] = f"Bearer {settings['bearer_token']}"
    headers.update(settings["headers"])
    return headers


def _with_id(entry):
    field = settings["id_field"]
    if not field or entry.id is None:
        return entry.to_json()
    return orjson.dumps({**entry, field: entry.id})


def _body(entries):
    form = settings["format"]
    if form == "ndjson":
        return b"".join(_with_id(entry) + b"\n" for entry in entries)
    if form == "json_array":
        return b"[" + b",".join(_with_id(entry) for entry in entries) + b"]"
    if form == "elasticsearch":
        lines = []
        for entry in entries:
            action = {"_index": settings["index"]}
            if entry.id is not None:
                action["_id"] = entry.id
            lines += [orjson.dumps({"index": action}), entry.to_json()]
        return b"\n".join(lines) + b"\n"
    return _loki_body(entries)


def _loki_body(entries):
    """Loki's push API: one stream per (level, module), values of [ns timestamp, line]."""
    streams = {}
    for entry in entries:
        labels = {**settings["labels"], "level": entry.get("level", ""),
                  "module": entry.get("module", "")}  # fmt: skip
        key = tuple(sorted(labels.items()))
        stream = streams.setdefault(key, {"stream": labels, "values": []})
        stream["values"].append([_nanoseconds(entry.get("timestamp")), entry.to_json().decode()])
    return orjson.dumps({"streams": list(streams.values())})


def _nanoseconds(timestamp):
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return str(time.time_ns())
    return str(int(moment.timestamp() * 1_000_000) * 1000)


def _connection():
    connection = state["connection"]
    if connection is None:
        url = state["url"]
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind(url.hostname, url.port, timeout=float(settings["timeout_s"]))
        state["connection"] = connection
    return connection


def _send(body):
    """(status, headers, answer) of one POST; ConnectionError when there is no answer."""
    url = state["url"]
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more
        connection = _connection()
        try:
            connection.request("POST", path, body=body, headers=_headers())
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            state["connection"] = None
            if attempt == 2 or not isinstance(
                exc, (http.client.RemoteDisconnected, BrokenPipeError)
            ):
                raise ConnectionError(
                    f"{url.scheme}://{url.netloc}: {exc or type(exc).__name__}"
                ) from None
    raise AssertionError("unreachable")


def _retry_after(headers):
    value = headers.get("Retry-After")
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0.0
    return max(0.0, min(seconds, float(settings["max_retry_after_s"])))


def flush(entries):
    wait = state["not_before"] - time.monotonic()
    if wait > 0:  # the server asked for it (Retry-After)
        time.sleep(wait)
    body = _body(entries)
    if settings["gzip"]:
        body = gzip.compress(body, compresslevel=5)
    status, headers, answer = _send(body)
    if status == 429 or status >= 500:
        pause = _retry_after(headers)
        state["not_before"] = time.monotonic() + pause
        raise ConnectionError(f"HTTP {status}" + (f", retry after {pause:.0f} s" if pause else ""))
    if not 200 <= status < 300:
        raise ValueError(f"HTTP {status}: {answer[:200].decode(errors='replace')}")
    if settings["format"] == "elasticsearch":
        return _bulk_results(answer, len(entries))
    return 0


def _bulk_results(answer, count):
    """Per entry from an Elasticsearch bulk answer: 0, or the item's status when refused.
    Throttled or server-side failures of some items raise (unavailable) only if every failed
    item is one of those; otherwise each failed entry gets its status."""
    try:
        reply = orjson.loads(answer)
    except orjson.JSONDecodeError:
        raise ValueError(f"not a bulk answer: {answer[:200]!r}") from None
    if not reply.get("errors"):
        return 0
    items = reply.get("items") or []
    statuses = [next(iter(item.values())).get("status", 500) for item in items]
    if len(statuses) != count:
        raise ValueError(f"bulk answer has {len(statuses)} items for {count} entries")
    failed = [status for status in statuses if not 200 <= status < 300]
    if failed and all(status == 429 or status >= 500 for status in failed):
        raise ConnectionError(f"Elasticsearch refused {len(failed)} items for now ({failed[0]})")
    return [0 if 200 <= status < 300 else UNAVAILABLE if status == 429 or status >= 500 else status
            for status in statuses]  # fmt: skip


def plugin_shutdown():
    connection, state["connection"] = state["connection"], None
    if connection is not None:
        connection.close()
