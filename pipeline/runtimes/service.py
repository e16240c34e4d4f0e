"""Service plugins: independent processes reached over a Unix socket or TCP (CONTRACT §6).

JSON-RPC 2.0, one message per line; methods ``info``, ``init``, ``process``,
``process_batch`` and ``shutdown``, with results shaped as in the subprocess protocol. A service
runs on its own (any language, any machine); Logloom only connects. A dead or silent service is a
failed plugin call — the entries go to the DLQ and the link is reopened with backoff — never a
dead worker.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Collection, Sequence
from itertools import count
from typing import Any
from urllib.parse import urlsplit

import orjson

from pipeline.config import ServiceConfig
from pipeline.entry import Entry
from pipeline.errors import ConfigError, PluginLoadError
from pipeline.plugin import PluginInfo, validate_info
from pipeline.runtimes.remote import (
    LinkError,
    RemotePlugin,
    batch_results,
    entries_json,
    read_line,
    write_all,
)


def parse_address(address: str) -> tuple[int, Any]:
    """``unix:///run/x.sock`` (or a bare path) or ``tcp://host:port`` → (family, sockaddr)."""
    if address.startswith("/"):
        return socket.AF_UNIX, address
    parts = urlsplit(address)
    if parts.scheme == "unix" and (parts.path or parts.netloc):
        return socket.AF_UNIX, parts.netloc + parts.path
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        return socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET, (
            parts.hostname,
            parts.port,
        )
    raise ConfigError(f"service address {address!r}: expected unix:///path or tcp://host:port")


class SocketLink:
    """One connection to a service; reconnects on every :meth:`open`."""

    def __init__(self, address: str, connect_timeout_ms: int) -> None:
        self.address = address
        self.family, self.sockaddr = parse_address(address)
        self.connect_timeout_s = connect_timeout_ms / 1000
        self.sock: socket.socket | None = None
        self._buffer = bytearray()
        self._ids = count(1)

    @property
    def what(self) -> str:
        return f"service at {self.address}"

    def open(self, config: dict[str, Any]) -> PluginInfo:
        info = self.connect()
        self.request("init", {"config": config}, time.monotonic() + self.connect_timeout_s)
        return info

    def connect(self) -> PluginInfo:
        self.close()
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout_s)
        try:
            sock.connect(self.sockaddr)
        except OSError as exc:  # refused, missing socket file, timeout, unreachable, DNS
            sock.close()
            reason = exc.strerror or type(exc).__name__
            raise LinkError(f"cannot connect to {self.what}: {reason}") from None
        if self.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        self._buffer.clear()
        raw = self.request("info", None, time.monotonic() + self.connect_timeout_s)
        try:
            return validate_info(raw, self.address)
        except PluginLoadError as exc:
            raise LinkError(f"bad info from {self.what}: {exc}") from None

    def request(self, method: str, params: dict[str, Any] | None, deadline: float) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            message["params"] = params
        answer = self._exchange(orjson.dumps(message) + b"\n", message["id"], deadline)
        if "error" in answer:
            raise LinkError(f"{method} failed: {_error_text(answer['error'])}")
        return answer.get("result")

    def call(self, entries: Sequence[Entry], deadline: float) -> list[Any]:
        request_id = next(self._ids)
        line = b'{"jsonrpc":"2.0","id":%d,"method":"process_batch","params":{"entries":[%b]}}\n' % (
            request_id,
            entries_json(entries),
        )
        answer = self._exchange(line, request_id, deadline)
        if "error" in answer:
            return batch_results({"status": 1, "error": _error_text(answer["error"])}, len(entries))
        return batch_results(answer.get("result"), len(entries))

    def _exchange(self, line: bytes, request_id: int, deadline: float) -> dict[str, Any]:
        if self.sock is None:
            raise LinkError(f"not connected to {self.what}")
        write_all(self.sock.fileno(), line, deadline, self.what)
        raw = read_line(self.sock.fileno(), self._buffer, deadline, self.what)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise LinkError(f"answered invalid JSON: {raw[:80]!r}") from None
        if not isinstance(answer, dict) or answer.get("id") != request_id:
            raise LinkError(f"answered out of turn: {raw[:80]!r}")
        return answer

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        goodbye = b'{"jsonrpc":"2.0","id":0,"method":"shutdown"}\n'
        with contextlib.suppress(LinkError, OSError):
            write_all(sock.fileno(), goodbye, time.monotonic() + 0.05, self.what)
        sock.close()


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def connect_service(
    name: str, service: ServiceConfig, config: dict[str, Any], types: Collection[str] | None
) -> RemotePlugin | None:
    """The configured service plugin, connected if it is up; None if not of ``types``."""
    try:
        link = SocketLink(service.address, service.connect_timeout_ms)
    except ConfigError as exc:
        raise PluginLoadError(str(exc)) from None
    if types is not None and service.type not in types:
        return None
    plugin = RemotePlugin(
        link,
        validate_info({"name": name, "type": service.type, "version": "0.0.0"}, service.address),
        service.address,
        "service",
        config,
        service.timeout_ms,
    )
    try:
        plugin.info = link.open(config)
    except LinkError as exc:
        # Services come and go on their own: until this one answers, its entries are failed
        # calls (the DLQ), retried with backoff, rather than a plugin the worker runs without.
        plugin.mark_broken(str(exc))
    return plugin
