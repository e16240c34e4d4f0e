"""``logloom aggregator``: the central receiver that remote Logloom nodes ship their logs to.

An independent process (design §2.3, §6.4) with its own config and its own Redis: nodes (the
bundled ``sink_aggregator`` sink) connect over TCP, optionally TLS, and send batches; each batch
goes into this Redis's ingest stream in one round trip and is acknowledged once its XADDs are
done, so the node may forget it. From there the central pipeline runs as any other.

The protocol: line-delimited JSON (UTF-8), one request line, one answer line, in order, on a
connection a node keeps open. A request is a batch::

    {"op": "batch", "node": "web-1", "batch": "5f0c...", "token": "...",
     "entries": [{"id": "1732950000000-0", "entry": {"level": "INFO", ...}}, ...]}

``node`` names the source (1-200 printable characters, no spaces); ``batch`` is the sender's ID
for this batch, the same each time it sends it again; ``token`` the shared secret
(``aggregator.token``), required when one is configured; ``entries`` each entry's JSON object
with its stream ID on the node. Each entry is written as the ingest field ``entry`` with
``logloom_node`` and ``logloom_id`` added (an entry that has them already, from an earlier hop,
keeps them). The answers::

    {"ok": true, "batch": "5f0c...", "added": 500}
    {"ok": true, "batch": "5f0c...", "added": 0, "duplicate": true}
    {"ok": false, "batch": ..., "code": "unavailable" | "full", "error": "...", "retry": true}
    {"ok": false, "batch": ..., "code": "unauthorized" | "malformed", "error": "...",
     "retry": false}

``duplicate``: this node sent this batch within ``aggregator.dedup_window_s`` and it was written
then (a lost acknowledgement, a batch resent from the spool); it is not written twice. ``retry``:
nothing was written, send it again later (the Redis here is down; ``full``: the ingest stream
stayed over ``ingest.max_len`` for ``ingest.backpressure_timeout_s``, as for producers).
``unauthorized`` (a bad token) and ``malformed`` (a line that is not such a batch, or longer than
``aggregator.max_batch_bytes``) are answered, logged in one line naming the peer, and the
connection is closed.

Guarantee: at least once. A batch is written whole (one Lua script: the dedup mark, the length
check and every XADD), and acknowledged only after; an entry can still arrive twice when a node
sends it again in another batch (its sink worker died before acknowledging it at home), so
deduplicate on ``(logloom_node, logloom_id)`` where it matters.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import signal
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from pipeline.config import Config
from pipeline.embedded import resolve_url
from pipeline.errors import ConfigError
from pipeline.keys import Keys
from pipeline.log import add_secret_text, redact_url
from pipeline.streams import connect

log = logging.getLogger("logloom.aggregator")

NODE_FIELD = "logloom_node"
ID_FIELD = "logloom_id"
MAX_NAME = 200
HANDSHAKE_TIMEOUT_S = 10.0

# KEYS: the ingest stream, the batch's dedup mark. ARGV: max_len (0: none), dedup window s
# (0: none), then each entry's JSON. -2: written before; -1: the stream is full; else added.
WRITE_BATCH = """
local window = tonumber(ARGV[2])
if window > 0 and redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local max_len = tonumber(ARGV[1])
if max_len > 0 and redis.call('XLEN', KEYS[1]) >= max_len then return -1 end
for i = 3, #ARGV do redis.call('XADD', KEYS[1], '*', 'entry', ARGV[i]) end
if window > 0 then redis.call('SET', KEYS[2], #ARGV - 2, 'EX', window) end
return #ARGV - 2
"""


class Refused(Exception):
    """A request answered with an error; ``code`` and ``retry`` go into the answer."""

    def __init__(self, code: str, error: str, retry: bool = False) -> None:
        super().__init__(error)
        self.code = code
        self.retry = retry


@dataclass
class Batch:
    node: str
    batch: str
    token: str
    payloads: list[bytes]


def _name(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME
        or not value.isprintable()
        or " " in value
    ):
        raise Refused("malformed", f"'{key}' must be 1-{MAX_NAME} printable characters, no spaces")
    return value


def parse_batch(line: bytes) -> Batch:
    """The batch a request line holds, each entry as the JSON to XADD; Refused if malformed."""
    try:
        request = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise Refused("malformed", f"not JSON: {exc}") from None
    if type(request) is not dict:
        raise Refused("malformed", f"a JSON {type(request).__name__}, not an object")
    if request.get("op", "batch") != "batch":
        raise Refused("malformed", f"unknown op {request.get('op')!r} (expected 'batch')")
    node, batch = _name(request, "node"), _name(request, "batch")
    token = request.get("token") or ""
    entries = request.get("entries")
    if type(entries) is not list:
        raise Refused("malformed", "'entries' must be a list")
    payloads = []
    for index, item in enumerate(entries):
        entry = item.get("entry") if type(item) is dict else None
        if type(entry) is not dict:
            raise Refused("malformed", f"entries[{index}].entry is not a JSON object")
        stream_id = item.get("id")
        if stream_id is not None and type(stream_id) is not str:
            raise Refused("malformed", f"entries[{index}].id is not a string")
        if NODE_FIELD not in entry:
            entry[NODE_FIELD] = node
        if ID_FIELD not in entry and stream_id is not None:
            entry[ID_FIELD] = stream_id
        payloads.append(orjson.dumps(entry))
    return Batch(node, batch, token if isinstance(token, str) else "", payloads)


def read_token(config: Config) -> str | None:
    """The shared token, from ``aggregator.token`` or ``token_file``; masked in every log line."""
    aggregator = config.aggregator
    token = aggregator.token
    if aggregator.token_file is not None:
        try:
            token = Path(aggregator.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"aggregator.token_file: cannot read: {exc.strerror}") from None
        if len(token) < 16:
            raise ConfigError(f"aggregator.token_file: {aggregator.token_file}: use 16+ characters")
    if token:
        add_secret_text(token)
    return token or None


def tls_context(config: Config) -> ssl.SSLContext | None:
    tls = config.aggregator.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"aggregator.tls: cannot load the certificate: {exc}") from None
    return context


class Writer:
    """Writes batches into the ingest stream: one script call (one round trip) per batch, and
    backpressure as :class:`pipeline.producer.Producer` has it. With ``redis.partitions`` > 1
    a node's batches all go to one partition (by a hash of its name), so they stay in order."""

    def __init__(self, client: redis.Redis, config: Config) -> None:
        self.client = client
        self.partitions: list[Keys] = config.keys.partitions()
        self.ingest = config.ingest
        self.window_s = config.aggregator.dedup_window_s
        self.script = client.register_script(WRITE_BATCH)
        self._down_lock = threading.Lock()
        self._down_since: float | None = None

    def write(self, batch: Batch) -> int | None:
        """Entries added, None for a batch written before; Refused (retry) while Redis is down
        or the stream full."""
        deadline = time.monotonic() + self.ingest.backpressure_timeout_s
        delay = 0.05
        part = self.partition(batch.node)
        keys = [part.ingest, part.aggregator_batch(batch.node, batch.batch)]
        args: list[bytes | int] = [self.ingest.max_len, self.window_s, *batch.payloads]
        while True:
            try:
                added = int(self.script(keys=keys, args=args))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._down(exc)
                error = f"the aggregator's Redis is unavailable: {exc}"
                raise Refused("unavailable", error, True) from None
            except redis.ResponseError as exc:  # out of memory, a failover: nothing is written
                raise Refused(
                    "unavailable", f"the aggregator's Redis refused: {exc}", True
                ) from None
            self._up()
            if added == -2:
                return None
            if added != -1:
                return added
            if self.ingest.backpressure == "fail" or time.monotonic() >= deadline:
                raise Refused(
                    "full",
                    f"{part.ingest} holds over ingest.max_len={self.ingest.max_len} "
                    "entries: the central workers are behind",
                    True,
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def partition(self, node: str) -> Keys:
        """The keys of the partition a node's batches go to."""
        return self.partitions[zlib.crc32(node.encode()) % len(self.partitions)]

    def _down(self, exc: Exception) -> None:
        with self._down_lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("Aggregator: Redis unavailable (%s); nodes keep their batches", exc)

    def _up(self) -> None:
        if self._down_since is None:
            return
        with self._down_lock:
            if self._down_since is not None:
                log.info("Aggregator: Redis back after %.1f s", time.monotonic() - self._down_since)
                self._down_since = None


def _answer(batch: object, **fields: Any) -> bytes:
    return orjson.dumps({"ok": "error" not in fields, "batch": batch, **fields}) + b"\n"


class Aggregator:
    """The TCP (or TLS) server: a thread per connection, batches of a connection in order."""

    def __init__(
        self,
        config: Config,
        writer: Writer,
        token: str | None,
        context: ssl.SSLContext | None,
    ) -> None:
        self.settings = config.aggregator
        self.writer = writer
        self.token = token.encode() if token else None
        self.context = context
        self.stop = threading.Event()
        self.listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def bind(self, host: str, port: int) -> tuple[str, int]:
        self.listener = socket.create_server((host, port), backlog=128)
        self.listener.settimeout(0.5)
        address = self.listener.getsockname()
        return str(address[0]), int(address[1])

    def serve(self) -> None:
        """Accept until :attr:`stop` is set; then let every connection finish its batch."""
        assert self.listener is not None, "bind first"
        threads: list[threading.Thread] = []
        while not self.stop.is_set():
            try:
                conn, address = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("Aggregator: accept failed: %s", exc)
                continue
            thread = threading.Thread(
                target=self._connection, args=(conn, f"{address[0]}:{address[1]}"), daemon=True
            )
            thread.start()
            threads = [one for one in threads if one.is_alive()] + [thread]
        self.listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):  # an idle reader sees EOF; a batch completes
                    conn.shutdown(socket.SHUT_RD)
        for thread in threads:
            thread.join(timeout=self.writer.ingest.backpressure_timeout_s + 5)

    def _connection(self, conn: socket.socket, peer: str) -> None:
        try:
            if self.context is not None:
                conn.settimeout(HANDSHAKE_TIMEOUT_S)
                try:
                    conn = self.context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    log.warning("Aggregator: TLS handshake with %s failed: %s", peer, exc)
                    return
            conn.settimeout(self.settings.idle_timeout_s or None)
            with self._lock:
                self._open.add(conn)
            with conn.makefile("rb", buffering=1 << 16) as reader:
                self._requests(conn, reader.readline, peer)
        except (OSError, ssl.SSLError) as exc:
            log.debug("Aggregator: connection from %s ended: %s", peer, exc)
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _requests(self, conn: socket.socket, readline: Callable[[int], bytes], peer: str) -> None:
        limit = self.settings.max_batch_bytes
        while True:
            line = readline(limit + 1)
            if not line:
                return
            if len(line) > limit and not line.endswith(b"\n"):
                error = f"line over aggregator.max_batch_bytes ({limit} bytes)"
                log.warning("Aggregator: refused a line from %s: %s", peer, error)
                conn.sendall(_answer(None, code="malformed", error=error, retry=False))
                return
            answer, keep_open = self._request(line, peer)
            conn.sendall(answer)
            if not keep_open:
                return

    def _request(self, line: bytes, peer: str) -> tuple[bytes, bool]:
        """The answer to one line, and whether the connection stays open."""
        batch_id: object = None
        source = peer
        try:
            batch = parse_batch(line)
            batch_id = batch.batch
            source = f"{peer} (node {batch.node!r})"
            if self.token is not None and not hmac.compare_digest(batch.token.encode(), self.token):
                raise Refused("unauthorized", "bad token")
            added = self.writer.write(batch)
        except Refused as exc:
            if exc.retry:
                return _answer(batch_id, code=exc.code, error=str(exc), retry=True), True
            log.warning(
                "Aggregator: refused %s from %s: %s",
                "a line" if batch_id is None else f"batch {batch_id}",
                source,
                exc if exc.code != "unauthorized" else "bad token (closing the connection)",
            )
            return _answer(batch_id, code=exc.code, error=str(exc), retry=False), False
        if added is None:
            return _answer(batch_id, added=0, duplicate=True), True
        return _answer(batch_id, added=added), True


def run(config: Config, host: str | None = None, port: int | None = None) -> int:
    """``logloom aggregator``: serve until SIGTERM/SIGINT, then finish the batches in hand."""
    token = read_token(config)
    context = tls_context(config)
    host = host or config.aggregator.host
    port = config.aggregator.port if port is None else port
    if token is None and host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(
            f"{config.source}: aggregator.token: required to listen beyond loopback ({host})"
        )
    url = resolve_url(config)
    client = connect(url, config.redis.cluster)
    client.ping()
    server = Aggregator(config, Writer(client, config), token, context)
    bound_host, bound_port = server.bind(host, port)

    def stop(signum: int, _frame: object) -> None:
        log.info(
            "Aggregator: %s received; finishing the batches in hand", signal.Signals(signum).name
        )
        server.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "Aggregator listening on %s:%d (%s, %s), writing to %s at %s",
        bound_host,
        bound_port,
        "TLS" if context else "plain TCP",
        "token required" if token else "no token",
        ", ".join(part.ingest for part in config.keys.partitions()),
        redact_url(url),
    )
    server.serve()
    log.info("Aggregator stopped")
    return 0
