"""Ship entries to a central Logloom (``logloom aggregator``), keeping them in a local spool
while the link is down (design §6.4, ``log_aggregator_remote``).

How a batch travels:

* Spool empty: ``flush`` sends the batch as one line of the aggregator's protocol (see
  ``pipeline/aggregator.py``) and waits for its acknowledgement, which comes once the batch is in
  the central Redis; then the sink stage acknowledges the entries here.
* No answer (refused, reset, timed out, TLS failed), or the aggregator answers ``retry`` (its
  Redis is down or its ingest full): the batch goes into the spool and ``flush`` returns 0, the
  spool owns it now. While the spool holds anything, every new batch goes in behind it, so a
  source's batches arrive in order.
* A background thread drains the spool, oldest batch first, reconnecting with exponential
  backoff (``backoff_initial_s`` to ``backoff_max_s``); a batch leaves the spool once
  acknowledged. A thread rather than draining in ``flush``: a spool must drain when no new
  entries come (a quiet node, or a worker restarted onto the spool its predecessor left), and a
  flush that first sent a large backlog would stall the sink stage's reads that long.
* Spool full (``spool.max_bytes``): ``flush`` raises ConnectionError, so the sink stage holds the
  entries, pending in its group in Redis, and retries them; none are lost or dead-lettered. So
  does an aggregator that refuses the token (until the token is fixed).
* The aggregator refuses a batch as malformed: the entries' fault (ValueError: retried, then the
  sink DLQ). A spooled batch it refuses is moved to ``<slot>/rejected/`` with an [ERROR] line.

The spool is a directory of segment files, one batch each (``<seq>.seg``: the request line
without the token), each written to a temporary file, fsynced, renamed and the directory fsynced,
so a crash leaves a batch whole or absent. It survives the worker: a new process finds the
segments and drains them before anything newer. Each sink worker takes a slot
``<spool.dir>/slot-<n>`` (an flock; a new worker takes the lowest free one, so one restarted takes
its predecessor's); a live worker with an empty spool also drains a slot no worker holds any more.

Guarantee: at least once. Each entry goes with its stream ID (``logloom_id`` centrally, beside
``logloom_node``), and each batch with an ID derived from its entries' IDs, which the aggregator
remembers: a batch sent again after a lost acknowledgement is not written twice. An entry can
still arrive twice when this worker dies between handing a batch over and acknowledging it in
Redis; deduplicate on ``(logloom_node, logloom_id)`` where that matters.

``plugin_stats()`` reports the spool (batches, bytes) and the link for ``logloom status``.
"""

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path

import orjson

PLUGIN_INFO = {
    "name": "sink_aggregator",
    "version": "1.0.0",
    "type": "sink",
    "capability": ["batch", "spool", "tls"],
    "author": "Logloom Team",
    "description": "a central Logloom aggregator over TCP/TLS, with a durable local spool",
}

log = logging.getLogger("logloom.plugins.sink_aggregator")

DEFAULTS = {
    "address": "127.0.0.1:7450",
    "node": None,  # null: this machine's hostname
    "token": None,
    "token_file": None,
    "tls": {"enabled": False, "ca_file": None, "server_name": None},
    "connect_timeout_s": 5.0,
    "timeout_s": 60.0,
    "backoff_initial_s": 0.2,
    "backoff_max_s": 10.0,
    "spool": {"dir": ".logloom/spool/sink_aggregator", "max_bytes": 1 << 30},
}
settings = {}
state = {"sender": None}
MAX_SLOTS = 64
SLOT_WAIT_S = 2.0  # for a slot held by a predecessor that is going away (a reload)
ORPHAN_SCAN_S = 5.0
MAX_ANSWER_BYTES = 1 << 16
NAME = f"Sink '{PLUGIN_INFO['name']}'"


class LinkDown(ConnectionError):
    """No answer from the aggregator."""


class SpoolFull(ConnectionError):
    """The spool cannot take the batch: the entries stay in Redis."""


def plugin_init(config):
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings.clear()
    settings.update(DEFAULTS)
    settings.update(config)
    for nested in ("tls", "spool"):  # a partial override keeps the other keys' defaults
        extra = set(settings[nested] or {}) - set(DEFAULTS[nested])
        if extra:
            raise ValueError(f"unknown settings: {', '.join(f'{nested}.{k}' for k in extra)}")
        settings[nested] = {**DEFAULTS[nested], **(settings[nested] or {})}
    host, _, port = str(settings["address"]).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {settings['address']!r}: expected host:port")
    if settings["spool"]["max_bytes"] < 65536:
        raise ValueError("spool.max_bytes: at least 65536 (a batch must fit)")
    node = settings["node"] or socket.gethostname()
    if not node.isprintable() or " " in node or not 0 < len(node) <= 200:
        raise ValueError(f"node {node!r}: 1-200 printable characters, no spaces")
    host = host.strip("[]")
    link = Link(host, int(port), _tls_context(), settings["tls"]["server_name"] or host)
    sender = Sender(link, node, _token(), Path(settings["spool"]["dir"]))
    sender.start()
    state["sender"] = sender
    return 0


def _token():
    if settings["token"] and settings["token_file"]:
        raise ValueError("token and token_file: set one, not both")
    if settings["token_file"]:
        return Path(settings["token_file"]).read_text().strip()
    return settings["token"]


def _tls_context():
    tls = settings["tls"]
    if not tls["enabled"]:
        return None
    if tls["ca_file"] and not Path(tls["ca_file"]).is_file():
        raise ValueError(f"tls.ca_file: no such file: {tls['ca_file']}")
    context = ssl.create_default_context(cafile=tls["ca_file"])
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def batch_line(node, entries):
    """The request line of a batch, without the token (that is how the spool keeps it)."""
    ids = [entry.id for entry in entries]
    if all(ids):
        batch_id = hashlib.blake2b("\n".join(ids).encode(), digest_size=16).hexdigest()
    else:
        batch_id = uuid.uuid4().hex
    items = []
    for entry in entries:
        raw = entry.to_json()
        if b"\n" in raw or b"\r" in raw:  # line breaks between tokens: keep it one line
            raw = orjson.dumps(dict(entry))
        items.append(b'{"id":' + orjson.dumps(entry.id) + b',"entry":' + raw + b"}")
    head = orjson.dumps({"op": "batch", "node": node, "batch": batch_id})
    return head[:-1] + b',"entries":[' + b",".join(items) + b"]}\n"


class Link:
    """One connection to the aggregator, opened when needed; one exchange at a time."""

    def __init__(self, host, port, context, server_name):
        self.host, self.port, self.context, self.server_name = host, port, context, server_name
        self.address = f"{host}:{port}"
        self.sock = None
        self.reader = None
        self.lock = threading.Lock()

    def exchange(self, line):
        """The aggregator's answer (a dict) to one request line; LinkDown if none came."""
        with self.lock:
            for attempt in (1, 2):
                fresh = self.sock is None
                try:
                    if fresh:
                        self._connect()
                    self.sock.sendall(line)
                    answer = self.reader.readline(MAX_ANSWER_BYTES)
                except OSError as exc:
                    self.close()
                    raise LinkDown(f"{self.address}: {exc or type(exc).__name__}") from None
                if answer:
                    break
                self.close()  # closed while idle: once more on a new connection
                if fresh or attempt == 2:
                    raise LinkDown(f"{self.address}: connection closed without an answer")
            try:
                parsed = orjson.loads(answer)
            except orjson.JSONDecodeError:
                parsed = None
            if type(parsed) is not dict:
                self.close()
                raise LinkDown(f"{self.address}: not an aggregator's answer: {answer[:100]!r}")
            if parsed.get("code") in ("unauthorized", "malformed"):
                self.close()  # the aggregator closes after these
            return parsed

    def _connect(self):
        sock = socket.create_connection(
            (self.host, self.port), timeout=float(settings["connect_timeout_s"])
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.server_name)
            sock.settimeout(float(settings["timeout_s"]))
        except OSError:
            sock.close()
            raise
        self.sock, self.reader = sock, sock.makefile("rb")

    def close(self):
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                self.reader.close()
                sock.close()

    def abort(self):
        """Wake a thread blocked in an exchange (at shutdown)."""
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Spool:
    """One slot: segment files ``<seq>.seg`` oldest first, held with an flock."""

    def __init__(self, directory, lock_fd):
        self.directory = directory
        self.lock_fd = lock_fd
        self.segments = sorted(directory.glob("*.seg"))
        self.sizes = {path: path.stat().st_size for path in self.segments}
        self.bytes = sum(self.sizes.values())
        self.next_seq = int(self.segments[-1].stem) + 1 if self.segments else 1
        for stale in directory.glob(".*.tmp"):  # a write a crash cut short: never acknowledged
            stale.unlink()

    @classmethod
    def take(cls, directory):
        """The slot, locked, or None when another holder has it."""
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(directory, fd)

    def append(self, data, max_bytes):
        if self.bytes + len(data) > max_bytes:
            if not self.segments:
                raise SpoolFull(
                    f"a batch of {len(data)} bytes does not fit in spool.max_bytes={max_bytes} "
                    f"(spool {self.directory}): raise it or lower sink.batch_size"
                )
            raise SpoolFull(
                f"spool {self.directory} full ({self.bytes} of spool.max_bytes={max_bytes} bytes)"
            )
        path = self.directory / f"{self.next_seq:020d}.seg"
        temporary = self.directory / f".{self.next_seq:020d}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            unwritten = memoryview(data)
            while unwritten:  # os.write may write less than asked (a full disk, a signal)
                unwritten = unwritten[os.write(fd, unwritten) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
        self._sync_directory()
        self.next_seq += 1
        self.segments.append(path)
        self.sizes[path] = len(data)
        self.bytes += len(data)

    def head(self):
        """(path, batch line) of the oldest segment, or None when the spool is empty."""
        if not self.segments:
            return None
        path = self.segments[0]
        return path, path.read_bytes()

    def pop(self, path, rejected=False):
        """Forget the oldest segment: deleted once acknowledged, or set aside if refused."""
        if rejected:
            (self.directory / "rejected").mkdir(exist_ok=True)
            path.rename(self.directory / "rejected" / path.name)
        else:
            path.unlink(missing_ok=True)
        self.segments.remove(path)
        self.bytes -= self.sizes.pop(path)

    def _sync_directory(self):
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self):
        os.close(self.lock_fd)  # releases the flock


def _size(count, size):
    return f"{count} batches, {size} bytes"


class Sender:
    """Direct sends while the spool is empty; the spool and its drain thread otherwise."""

    def __init__(self, link, node, token, root):
        self.link, self.node, self.root = link, node, root
        self.token_part = b'{"token":' + orjson.dumps(token or "") + b","
        self.max_bytes = int(settings["spool"]["max_bytes"])
        self.lock = threading.Lock()  # the spool, and whether a send may bypass it
        self.spool = None
        self.ready = threading.Event()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sink_aggregator-spool", daemon=True)
        self.link_up = True
        self.spooling_since = None  # when the current spooling episode began
        self.spooled = 0  # batches spooled in it
        self.resent = 0  # and sent from the spool
        self.full = False
        self.refused_token = False
        self.last_orphan_scan = 0.0

    def start(self):
        self.thread.start()

    def signed(self, line):
        return self.token_part + line[1:]

    def deliver(self, entries):
        line = batch_line(self.node, entries)
        if not self.ready.wait(SLOT_WAIT_S * 3):
            raise ConnectionError(f"no free spool slot under {self.root} (see the log)")
        with self.lock:
            cause = "behind the spool"
            if not self.spool.segments:
                try:
                    answer = self.link.exchange(self.signed(line))
                except LinkDown as exc:
                    cause = str(exc)
                else:
                    cause = self._outcome(answer)
                    if cause is None:
                        return 0
            self._append(line, cause)
        self.wake.set()
        return 0

    def _outcome(self, answer):
        """None when the batch is written; the cause when it should be spooled; raises when the
        aggregator refuses it."""
        self.link_up = True
        if answer.get("ok"):
            self._token_accepted()
            return None
        error = f"aggregator {self.link.address}: {answer.get('error')}"
        if answer.get("retry"):
            return error
        if answer.get("code") == "unauthorized":
            self._token_refused(error)
            raise ConnectionError(error)  # not the entries' fault: they wait in Redis
        raise ValueError(error)

    def _append(self, line, cause):
        spool = self.spool
        try:
            spool.append(line, self.max_bytes)
        except SpoolFull as exc:
            if not self.full:
                self.full = True
                log.warning(
                    "%s: %s; new entries wait in Redis (pending in group sink:%s) until it drains",
                    NAME,
                    exc,
                    PLUGIN_INFO["name"],
                )
            raise
        self.full = False
        self.link_up = False
        self.spooled += 1
        if self.spooling_since is None:
            self.spooling_since = time.monotonic()
            log.warning(
                "%s: %s; spooling batches in %s (now %s; up to %d bytes)",
                NAME,
                cause,
                spool.directory,
                _size(len(spool.segments), spool.bytes),
                self.max_bytes,
            )

    def _token_refused(self, error):
        if not self.refused_token:
            self.refused_token = True
            log.error("%s: %s; fix the token (entries wait meanwhile)", NAME, error)

    def _token_accepted(self):
        if self.refused_token:
            self.refused_token = False
            log.info("%s: aggregator %s accepts the token again", NAME, self.link.address)

    # -- the drain thread ---------------------------------------------------------------------

    def _run(self):
        self.spool = self._take_slot()
        if self.spool is None:
            return
        if self.spool.segments:
            self.spooling_since = time.monotonic()
            log.info(
                "%s: spool %s holds %s from before; sending them before anything newer",
                NAME,
                self.spool.directory,
                _size(len(self.spool.segments), self.spool.bytes),
            )
        self.ready.set()
        delay = float(settings["backoff_initial_s"])
        while not self.stop.is_set():
            sent = self._send_head(self.spool)
            if sent is None:
                with self.lock:
                    if not self.spool.segments:
                        self._drained()
                if not self._drain_orphans():
                    self.wake.wait(1.0)
                    self.wake.clear()
                continue
            if sent:
                delay = float(settings["backoff_initial_s"])
            else:
                self.stop.wait(delay)
                delay = min(delay * 2, float(settings["backoff_max_s"]))

    def _take_slot(self):
        for index in range(MAX_SLOTS):
            directory = self.root / f"slot-{index}"
            deadline = time.monotonic() + SLOT_WAIT_S
            while not self.stop.is_set():
                spool = Spool.take(directory)
                if spool is not None:
                    return spool
                if time.monotonic() > deadline:
                    break
                self.stop.wait(0.1)
        log.error("%s: every spool slot under %s is taken; not sending", NAME, self.root)
        return None

    def _send_head(self, spool):
        """Send a spool's oldest batch: None if the spool is empty, else whether it went."""
        with self.lock:
            head = spool.head()
        if head is None:
            return None
        path, line = head
        try:
            answer = self.link.exchange(self.signed(line))
        except LinkDown as exc:
            self._link_down(str(exc))
            return False
        self.link_up = True
        if answer.get("ok"):
            self._token_accepted()
            with self.lock:
                spool.pop(path)
            self.resent += 1
            return True
        error = f"aggregator {self.link.address}: {answer.get('error')}"
        if answer.get("retry"):
            self._link_down(error)
        elif answer.get("code") == "unauthorized":
            self._token_refused(error)
        else:
            log.error("%s: %s; batch %s set aside in %s/rejected", NAME, error, path.name,
                      spool.directory)  # fmt: skip
            with self.lock:
                spool.pop(path, rejected=True)
            return True
        return False

    def _link_down(self, cause):
        if self.link_up:
            log.warning("%s: %s; retrying with backoff, spool %s", NAME, cause,
                        _size(len(self.spool.segments), self.spool.bytes))  # fmt: skip
        self.link_up = False

    def _drained(self):
        if self.spooling_since is None:
            return
        log.info(
            "%s: aggregator %s back; spool drained: %d batches sent from it (%d spooled by this "
            "worker) over %.1f s",
            NAME,
            self.link.address,
            self.resent,
            self.spooled,
            time.monotonic() - self.spooling_since,
        )
        self.spooling_since = None
        self.spooled = self.resent = 0

    def _drain_orphans(self):
        """Drain a slot no live worker holds (there are fewer sink workers than before)."""
        if time.monotonic() - self.last_orphan_scan < ORPHAN_SCAN_S:
            return False
        self.last_orphan_scan = time.monotonic()
        for directory in sorted(self.root.glob("slot-*")):
            if directory == self.spool.directory or not any(directory.glob("*.seg")):
                continue
            orphan = Spool.take(directory)
            if orphan is None:
                continue
            log.info("%s: draining %s, left by a worker that is gone (%s)", NAME, directory,
                     _size(len(orphan.segments), orphan.bytes))  # fmt: skip
            try:
                while not self.stop.is_set() and self._send_head(orphan):
                    pass
            finally:
                orphan.close()
            return True
        return False

    def stats(self):
        spool = self.spool
        return {
            "spool_batches": len(spool.segments) if spool else 0,
            "spool_bytes": spool.bytes if spool else 0,
            "spool_full": int(self.full),
            "link": "up" if self.link_up else "down",
        }

    def close(self):
        self.stop.set()
        self.wake.set()
        self.link.abort()
        self.thread.join(timeout=10)
        self.link.close()
        spool = self.spool
        if spool is None or self.thread.is_alive():
            return
        if spool.segments:
            log.info("%s: stopping with %s in spool %s; the next worker there sends them",
                     NAME, _size(len(spool.segments), spool.bytes), spool.directory)  # fmt: skip
        spool.close()


def flush(entries):
    return state["sender"].deliver(entries)


def plugin_stats():
    sender = state["sender"]
    return sender.stats() if sender is not None else {}


def plugin_shutdown():
    sender, state["sender"] = state["sender"], None
    if sender is not None:
        sender.close()
