#!/usr/bin/env python3
"""Severity filter as a standalone Logloom service plugin (stdlib only, Python >= 3.10; it
uses orjson for its JSON where that is installed).

Logloom workers connect over a Unix socket or TCP and speak JSON-RPC 2.0, one message per
"\\n"-terminated UTF-8 line; see plugins/services/README.md for the protocol. The filter logic is
that of plugins/python/log_filter_severity.py: keep an entry when its level ranks at or above
``min_level`` (default INFO); an unknown level counts as INFO.

``min_level`` is per connection: each client's ``init`` configures only that client.

Test hook: when the environment variable LOGLOOM_SERVICE_CRASH_ON is set (non-empty) and an
entry's "message" equals it, the process exits at once with code 3, as if it died mid-batch.

Usage::

    python plugins/services/severity_service.py [--unix PATH | --tcp HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import sys
from typing import Any

DEFAULT_UNIX_PATH = "/tmp/logloom-severity.sock"
LINE_LIMIT = 64 * 1024 * 1024  # longest request line accepted, in bytes

PLUGIN_INFO = {
    "name": "severity_service",
    "version": "1.0.0",
    "type": "filter",
    "capability": ["text", "batch"],
    "author": "Logloom Team",
    "description": "Drops entries below min_level (default INFO); standalone service",
    "mode": "sync",
}

LEVEL_MAP = {"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3, "FATAL": 4}
DEFAULT_RANK = LEVEL_MAP["INFO"]

CRASH_ON = os.environ.get("LOGLOOM_SERVICE_CRASH_ON") or None
CRASH_EXIT_CODE = 3

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

NOT_AN_OBJECT = "entry is not an object"


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; refuse them like any strict parser would.
    raise ValueError(f"invalid JSON constant {name}")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _parse(line: bytes) -> Any:
    """A request line's JSON; ValueError (UnicodeDecodeError among them) if it is not JSON."""
    return _decode(line.decode("utf-8"))


def _frame(message: dict[str, Any]) -> bytes:
    return (_encode(message) + "\n").encode("utf-8")


try:  # orjson where it is installed: parsing a 500-entry batch then takes a third of the time
    import orjson
except ImportError:
    pass
else:  # it refuses NaN and Infinity too; its JSONDecodeError is a ValueError

    def _parse(line: bytes) -> Any:
        return orjson.loads(line)

    def _frame(message: dict[str, Any]) -> bytes:
        return orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)


def _error(msg_id: Any, code: int, message: str) -> bytes:
    return _frame({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


def _keep(entry: dict[str, Any], min_rank: int) -> bool:
    """True keeps the entry. The caller has checked that ``entry`` is a dict."""
    if CRASH_ON is not None and entry.get("message") == CRASH_ON:
        os._exit(CRASH_EXIT_CODE)  # test hook: die like a crashed service, no cleanup
    level = entry.get("level")
    rank = LEVEL_MAP.get(level, DEFAULT_RANK) if isinstance(level, str) else DEFAULT_RANK
    return rank >= min_rank


class Session:
    """One client connection: its min_level and request dispatch."""

    def __init__(self) -> None:
        self.min_rank = DEFAULT_RANK
        self.closing = False

    def handle_line(self, line: bytes) -> bytes | None:
        """Answer one request line; None for a notification (a request without "id")."""
        try:
            request = _parse(line)
        except (UnicodeDecodeError, ValueError) as exc:
            return _error(None, PARSE_ERROR, f"Parse error: {exc}")
        if not isinstance(request, dict):
            what = (
                "batch arrays are not supported" if isinstance(request, list) else "not an object"
            )
            return _error(None, INVALID_REQUEST, f"Invalid Request: {what}")
        is_notification = "id" not in request
        msg_id = request.get("id")
        if msg_id is not None and (
            isinstance(msg_id, bool) or not isinstance(msg_id, str | int | float)
        ):
            return _error(None, INVALID_REQUEST, "Invalid Request: id must be a string or number")
        method = request.get("method")
        if request.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return _error(
                msg_id, INVALID_REQUEST, 'Invalid Request: need "jsonrpc":"2.0" and a method'
            )
        params = request.get("params", {})
        try:
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            result = self.dispatch(method, params)
        except RpcError as exc:
            response = _error(msg_id, exc.code, exc.message)
        except Exception as exc:  # a bug here must not kill the service
            response = _error(msg_id, INTERNAL_ERROR, f"Internal error: {exc!r}")
        else:
            response = _frame({"jsonrpc": "2.0", "id": msg_id, "result": result})
        return None if is_notification else response

    def dispatch(self, method: str, params: dict[str, Any]) -> Any:
        if method == "process_batch":
            return self.process_batch(params)
        if method == "process":
            return self.process(params)
        if method == "info":
            return PLUGIN_INFO
        if method == "init":
            return self.init(params)
        if method == "shutdown":
            self.closing = True
            return {"status": 0}
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")

    def init(self, params: dict[str, Any]) -> dict[str, Any]:
        config = params.get("config")
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise RpcError(INVALID_PARAMS, "params.config must be an object")
        min_level = str(config.get("min_level", "INFO")).upper()
        if min_level not in LEVEL_MAP:
            raise RpcError(
                INVALID_PARAMS,
                f"min_level {min_level!r} is not one of {', '.join(LEVEL_MAP)}",
            )
        self.min_rank = LEVEL_MAP[min_level]
        return {"status": 0}

    def process(self, params: dict[str, Any]) -> dict[str, Any]:
        if "entry" not in params:
            raise RpcError(INVALID_PARAMS, "params.entry is required")
        entry = params["entry"]
        if not isinstance(entry, dict):
            return {"status": 1, "error": NOT_AN_OBJECT}
        return {"status": 0, "result": _keep(entry, self.min_rank)}

    def process_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        entries = params.get("entries")
        if not isinstance(entries, list):
            raise RpcError(INVALID_PARAMS, "params.entries must be an array")
        min_rank = self.min_rank
        results: list[bool | None] = []
        errors: dict[str, str] = {}
        for index, entry in enumerate(entries):
            if isinstance(entry, dict):
                results.append(_keep(entry, min_rank))
            else:
                results.append(None)
                errors[str(index)] = NOT_AN_OBJECT
        return {"status": 0, "results": results, "errors": errors}


class Service:
    def __init__(self) -> None:
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.writers.add(writer)
        session = Session()
        try:
            while not session.closing:
                try:
                    line = await reader.readline()
                except ValueError:  # line longer than LINE_LIMIT; the stream is out of step now
                    writer.write(
                        _error(None, INVALID_REQUEST, f"request line exceeds {LINE_LIMIT} bytes")
                    )
                    await writer.drain()
                    break
                if not line:
                    break  # EOF
                if line.isspace():
                    continue
                response = session.handle_line(line)
                if response is not None:
                    writer.write(response)
                    await writer.drain()
        except OSError:
            pass  # the client went away
        finally:
            self.writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def close_clients(self) -> None:
        for writer in list(self.writers):
            writer.close()


def _prepare_unix_path(path: str) -> None:
    """Remove a stale socket file; refuse to clobber a live service or a non-socket file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        sys.exit(f"severity_service: {path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: stale
    else:
        sys.exit(f"severity_service: another service is already listening on {path}")
    finally:
        probe.close()


def _parse_tcp(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:7400
    return host, int(port)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    service = Service()
    unix_path: str | None = None
    unix_inode: int | None = None
    if args.tcp is not None:
        host, port = args.tcp
        server = await asyncio.start_server(service.handle_client, host, port, limit=LINE_LIMIT)
        bound_port = server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
        shown = f"[{host}]" if ":" in host else host
        where = f"tcp:{shown}:{bound_port}"
    else:
        unix_path = args.unix
        _prepare_unix_path(unix_path)
        server = await asyncio.start_unix_server(service.handle_client, unix_path, limit=LINE_LIMIT)
        unix_inode = os.stat(unix_path).st_ino
        where = f"unix:{unix_path}"

    print(f"listening on {where}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        service.close_clients()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)
        if unix_path is not None:
            # Only remove the file if it is still ours (a newer instance may have replaced it).
            with contextlib.suppress(OSError):
                if os.stat(unix_path).st_ino == unix_inode:
                    os.unlink(unix_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Logloom severity filter service plugin")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--unix",
        metavar="PATH",
        default=DEFAULT_UNIX_PATH,
        help=f"listen on this Unix socket (default {DEFAULT_UNIX_PATH})",
    )
    where.add_argument("--tcp", metavar="HOST:PORT", type=_parse_tcp, help="listen on TCP instead")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
