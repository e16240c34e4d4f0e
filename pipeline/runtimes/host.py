"""The plugin host: serves one Python or C plugin over the subprocess protocol (CONTRACT §5).

Run as ``logloom plugins run PATH`` (or ``python -m pipeline.runtimes.host PATH``). Workers start
one per isolated plugin, so a plugin that crashes (a segfault in C), hangs or leaks takes only
this process down. Requests and answers are one JSON line each on stdin/stdout; whatever the
plugin itself prints (Python ``print``, C ``printf``) is sent to stderr, so it can never corrupt
the protocol. Without an ``init`` request the plugin starts with its ``<name>.yaml`` on first use,
which is what makes ``echo '{"entry": {...}}' | logloom plugins run my_plugin.py`` work.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from pipeline import sandbox
from pipeline.entry import Entry, with_stream_id
from pipeline.errors import PluginLoadError
from pipeline.plugin import Failure, Plugin, describe_exception
from pipeline.runtimes import OpenedPlugin, open_plugin_file
from pipeline.runtimes.c import is_c_plugin
from pipeline.sandbox import SandboxSpec


def file_config(path: Path) -> dict[str, Any]:
    """The plugin's ``<name>.yaml`` (``plugin.yaml`` in a package), as discovery reads it."""
    from pipeline.config import parse_config
    from pipeline.discovery import Candidate, plugin_config

    return plugin_config(Candidate(path.stem, path), parse_config({}))


OUTPUT_BURST_BYTES = 64 * 1024
OUTPUT_BYTES_PER_S = 16 * 1024
"""What a plugin may print, passed on to the worker's stderr; more is counted and dropped."""


def protect_stdout() -> BinaryIO:
    """The protocol's own channel: the original stdout, which nothing else may write to."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout.flush()
    return protocol


def relay_output(plugin: str) -> tuple[TextIO, Callable[[], None]]:
    """Send what the plugin prints — Python or C, fd 1 or 2 — through a pipe to a thread that
    passes it on to the worker's stderr, each line prefixed with the plugin's name and stripped
    of control characters, up to :data:`OUTPUT_BYTES_PER_S`: a plugin that prints 100 MB can
    neither fill the worker's log, nor forge a line of it, nor corrupt the protocol. Returns
    the worker's stderr, for the host's own lines, which must not wait in the pipe, and the
    function that lets the relay finish before the host exits."""
    sys.stderr.flush()
    destination = os.dup(sys.stderr.fileno())
    reader, writer = os.pipe()
    os.dup2(writer, 1)
    os.dup2(writer, 2)
    os.close(writer)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    relay = threading.Thread(
        target=_relay, args=(reader, destination, plugin), name="output-relay", daemon=True
    )
    relay.start()

    def finish() -> None:
        sys.stdout.flush()
        os.close(1)
        os.close(2)
        relay.join(timeout=1.0)

    return open(destination, "w", buffering=1, closefd=False), finish


CONTROL_CHARACTERS = bytes(range(32)).replace(b"\t", b"") + b"\x7f"


def _relay(reader: int, destination: int, plugin: str) -> None:
    prefix = f"plugin '{plugin}' | ".encode()
    allowance, last, pending = float(OUTPUT_BURST_BYTES), time.monotonic(), b""
    dropped, told, in_dropped_line = 0, 0.0, False
    while chunk := os.read(reader, 65536):
        now = time.monotonic()
        allowance = min(OUTPUT_BURST_BYTES, allowance + (now - last) * OUTPUT_BYTES_PER_S)
        last = now
        if in_dropped_line:  # the rest of a line whose start was dropped goes too
            end = chunk.find(b"\n") + 1
            dropped += end or len(chunk)
            chunk, in_dropped_line = chunk[end:] if end else b"", not end
        if len(chunk) > allowance:
            dropped, pending, in_dropped_line = dropped + len(chunk), b"", not chunk.endswith(b"\n")
        elif chunk:
            allowance -= len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            pending = pending[-4096:]
            os.write(destination, b"".join(prefix + _printable(line) + b"\n" for line in lines))
        if dropped and now - told >= 5.0:  # one line every 5 s while it floods, not one a chunk
            os.write(destination, prefix + _dropped(dropped))
            dropped, told = 0, now
    if dropped:
        os.write(destination, prefix + _dropped(dropped))


def _printable(line: bytes) -> bytes:
    return line.translate(None, CONTROL_CHARACTERS)


def _dropped(count: int) -> bytes:
    return f"{count} bytes of output dropped (over {OUTPUT_BYTES_PER_S // 1024} KiB/s)\n".encode()


class Host:
    def __init__(
        self,
        path: Path,
        emit: Callable[[bytes], None],
        sandbox_layers: list[str] | None = None,
        restricted: bool = False,
    ) -> None:
        self.path = path
        self.sandbox_layers = sandbox_layers or []
        self.restricted = restricted
        self.emit = emit  # writes a line at once: an ai plugin's partial results
        self.opened: OpenedPlugin | None = None
        self.plugin: Plugin | None = None
        self.out_of_memory = False  # a host whose plugin hit its memory cap exits after answering

    def open(self) -> OpenedPlugin:
        if self.opened is None:
            self.opened = open_plugin_file(self.path, file_config(self.path), self.restricted)
        return self.opened

    def start(self, config: Mapping[str, Any] | None) -> Plugin:
        if self.plugin is not None:
            if config is None:
                return self.plugin
            self.plugin.shutdown()  # a second init: start over with the new config
            self.plugin, self.opened = None, None
        opened = self.open()
        self.plugin = opened.start(file_config(self.path) if config is None else config)
        return self.plugin

    def answer(self, request: Any) -> tuple[bytes, bool]:
        """The response line for one request, and whether to stop after sending it."""
        if not isinstance(request, dict):
            return error_line(f"a request is a JSON object, not {type(request).__name__}"), False
        if "batch" in request:
            entries = request["batch"]
            if not isinstance(entries, list):
                return error_line("'batch' must be a list of entries"), False
            ids = request.get("ids")
            if not (isinstance(ids, list) and len(ids) == len(entries)):
                ids = None
            return self.batch(entries, ids), False
        if "entry" in request:
            return self.single(request["entry"]), False
        op = request.get("op")
        if op == "info":
            info = self.open().info
            raw = {key: value for key, value in vars(info).items() if key != "extra"}
            info_dict = {**info.extra, **raw, "capability": list(info.capability)}
            return ok_line({"result": info_dict}), False
        if op == "init":
            config = request.get("config") or {}
            if not isinstance(config, dict):
                return error_line("'config' must be an object"), False
            self.start(config)
            return ok_line({"sandbox": self.sandbox_layers} if self.sandbox_layers else {}), False
        if op == "shutdown":
            if self.plugin is not None:
                self.plugin.shutdown()
                self.plugin = None
            return ok_line({}), True
        return error_line(f"unknown request (op {op!r}; expected entry, batch or op)"), False

    def single(self, raw: object) -> bytes:
        if not isinstance(raw, dict):
            return error_line("'entry' must be a JSON object")
        plugin = self.start(None)
        if plugin.info.type == "ai":
            return self.streamed(plugin, Entry(raw))
        (result,) = plugin.call_batch([Entry(raw)])
        if isinstance(result, Failure):
            self.out_of_memory |= result.error.startswith("MemoryError")
            return error_line(result.error, self.out_of_memory)
        # The debugging recipe's answer reads like the design's: {"status": 0, "result": true}.
        return json.dumps({"status": 0, "result": result}, default=str).encode() + b"\n"

    def streamed(self, plugin: Plugin, entry: Entry) -> bytes:
        """An ai plugin's results for one entry: each partial one sent as its own line at once
        (``{"status": 0, "partial": ...}``), the final one as the answer (CONTRACT §5)."""
        from pipeline.ai import results_of

        try:
            for result, final in results_of(plugin, entry):
                if final:
                    return ok_line({"result": result})
                self.emit(ok_line({"partial": result}))
        except Exception as exc:  # the plugin's own failure: this entry's answer
            return error_line(describe_exception(exc))
        return ok_line({"result": None})

    def batch(self, raw: Sequence[object], ids: Sequence[object] | None = None) -> bytes:
        plugin = self.start(None)
        entries = [Entry(one) if isinstance(one, dict) else None for one in raw]
        for entry, stream_id in zip(entries, ids or (), strict=False):
            if entry is not None and isinstance(stream_id, str):
                with_stream_id(entry, stream_id)
        good = [entry for entry in entries if entry is not None]
        answers = iter(plugin.call_batch(good))
        results: list[Any] = []
        errors: dict[str, str] = {}
        unavailable_flags: list[bool] = []
        for index, entry in enumerate(entries):
            result = next(answers) if entry is not None else Failure("entry is not an object")
            unavailable_flags.append(isinstance(result, Failure) and result.unavailable)
            if isinstance(result, Failure):
                errors[str(index)] = result.error
                self.out_of_memory |= result.error.startswith("MemoryError")
                result = None
            results.append(result)
        line = {"status": 0, "results": results, "errors": errors}
        unavailable = [i for i, one in enumerate(unavailable_flags) if one]
        if unavailable:  # the far side is down, not these entries bad (a sink's ConnectionError)
            line["unavailable"] = unavailable
        if self.out_of_memory:
            line["exiting"] = EXITING_OUT_OF_MEMORY
        return orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)


EXIT_OUT_OF_MEMORY = 75
EXITING_OUT_OF_MEMORY = "the plugin ran out of memory"
"""Said in the answer (``"exiting"``) before the host exits, so the worker starts a new one for
the next call instead of finding a closed pipe."""


def ok_line(fields: dict[str, Any]) -> bytes:
    return json.dumps({"status": 0, **fields}, default=str).encode() + b"\n"


def error_line(error: str, exiting: bool = False) -> bytes:
    fields = {"status": 1, "error": error}
    if exiting:
        fields["exiting"] = EXITING_OUT_OF_MEMORY
    return json.dumps(fields).encode() + b"\n"


def serve(
    path: Path,
    requests: BinaryIO,
    answers: BinaryIO,
    errors: TextIO | None = None,
    sandbox_layers: Sequence[str] = (),
    before_request: Callable[[], None] | None = None,
    restricted: bool = False,
) -> int:
    """Answer requests until ``shutdown`` or end of input; 0, or 2 if the plugin cannot load.
    ``errors`` takes the host's own lines; ``sandbox_layers`` is told in the ``init`` answer;
    ``before_request`` runs before each (the sandbox's CPU allowance); ``restricted`` loads a
    Python plugin with RestrictedPython."""
    errors = errors or sys.stderr

    def emit(line: bytes) -> None:
        answers.write(line)
        answers.flush()

    host = Host(path, emit, list(sandbox_layers), restricted)
    try:
        for line in requests:
            if not line.strip():
                continue
            try:
                request = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                reply, stop = error_line(f"bad JSON: {exc}"), False
            else:
                if before_request is not None:
                    before_request()
                try:
                    reply, stop = host.answer(request)
                except PluginLoadError as exc:
                    answers.write(error_line(f"cannot load plugin: {exc}"))
                    answers.flush()
                    print(f"[WARN] Failed to load plugin '{path.name}': {exc}", file=errors)
                    return 2
            answers.write(reply)
            answers.flush()
            if stop:
                return 0
            if host.out_of_memory:  # what it leaked stays leaked: start over, not limp on
                print("plugin ran out of memory; the host exits to be started afresh", file=errors)
                return EXIT_OUT_OF_MEMORY
    except BrokenPipeError:
        return 0
    finally:
        if host.plugin is not None:
            try:
                host.plugin.shutdown()
            except Exception as exc:  # the host is exiting anyway; say why, once
                print(f"plugin_shutdown() raised {describe_exception(exc)}", file=errors)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    spec = None
    if len(args) == 3 and args[0] == "--sandbox":
        spec = SandboxSpec.from_json(args[1])
        del args[:2]
    if len(args) != 1:
        print(
            "usage: python -m pipeline.runtimes.host [--sandbox JSON] PLUGIN_PATH", file=sys.stderr
        )
        return 2
    path = Path(args[0]).resolve()
    if not path.exists():
        print(f"plugin not found: {path}", file=sys.stderr)
        return 2
    protocol = protect_stdout()
    errors, finish_output = relay_output(path.stem)
    try:
        if spec is None:
            return serve(path, sys.stdin.buffer, protocol, errors)
        try:
            layers = sandbox.enter(spec, path, native=is_c_plugin(path))
        except OSError as exc:  # a layer that should hold did not: never run the plugin
            protocol.write(error_line(f"cannot load plugin: sandbox: {exc}"))
            protocol.flush()
            return 2

        def allow_cpu() -> None:
            sandbox.allow_cpu(spec.max_cpu_s)

        restricted = spec.restricted and not is_c_plugin(path)
        return serve(path, sys.stdin.buffer, protocol, errors, layers, allow_cpu, restricted)
    finally:
        finish_output()


if __name__ == "__main__":
    sys.exit(main())
