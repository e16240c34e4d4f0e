"""Plugins in a child process, over the line-delimited JSON protocol of CONTRACT §5.

The child is the plugin host (:mod:`pipeline.runtimes.host`) for a Python plugin in
``subprocess`` mode or a C library in ``isolated`` mode; any executable that speaks §5 works
too. A batch is one request line, ``{"batch": [...]}`` built from the JSON bytes the worker
already holds, and one answer line. A crash, hang or garbage kills only the child: the
:class:`~pipeline.runtimes.remote.RemotePlugin` around it starts a new one.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.entry import Entry
from pipeline.errors import PluginCallError, PluginLoadError
from pipeline.plugin import PluginInfo, validate_info
from pipeline.runtimes.remote import (
    LinkError,
    RemotePlugin,
    batch_results,
    entries_json,
    ids_json,
    read_line,
    write_all,
)
from pipeline.sandbox import SandboxSpec, child_environment

log = logging.getLogger("logloom.plugins")

START_TIMEOUT_S = 15.0
"""For the child to start and answer ``info`` and ``init`` (imports can be slow)."""
STOP_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class HostCommand:
    """How to start a plugin host: its argv, for a sandboxed one its whole environment, and the
    memory it may fill (RLIMIT_DATA, set on it from here: a leaking plugin gets MemoryError,
    then a fresh host, instead of the machine's memory)."""

    argv: list[str]
    env: dict[str, str] | None = None
    max_memory_mb: int | None = None


def host_command(
    path: Path, sandbox: SandboxSpec | None = None, max_memory_mb: int | None = None
) -> HostCommand:
    argv = [sys.executable, "-m", "pipeline.runtimes.host", str(path)]
    if sandbox is None:
        return HostCommand(argv, max_memory_mb=max_memory_mb)
    Path(sandbox.work_dir).mkdir(parents=True, exist_ok=True)
    return HostCommand(
        [*argv[:-1], "--sandbox", sandbox.to_json(), str(path)], child_environment(sandbox)
    )


class ChildLink:
    """Pipes to one child process; a new child on every :meth:`open`."""

    def __init__(self, command: HostCommand | Sequence[str], label: str) -> None:
        self.command = command if isinstance(command, HostCommand) else HostCommand(list(command))
        self.label = label
        self.sandbox_layers: list[str] = []
        self.exiting: str | None = None  # the host said it exits after its last answer, and why
        self.child: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()

    @property
    def what(self) -> str:
        return f"plugin process {self.child.pid}" if self.child else "plugin process"

    def open(self, config: dict[str, Any]) -> PluginInfo:
        info = self.start()
        self.initialise(config)
        return info

    def initialise(self, config: dict[str, Any]) -> None:
        """Hand the started plugin its config (``init``); note the sandbox the host is in."""
        answer = self.request({"op": "init", "config": config}, time.monotonic() + START_TIMEOUT_S)
        self.sandbox_layers = list(answer.get("sandbox") or [])

    def start(self) -> PluginInfo:
        """Start the child and ask who it is, without initialising the plugin."""
        self.close()
        try:
            # No PDEATHSIG: it follows the thread that started the child, not the process. The
            # host ends when its stdin does, which is when this process goes, however it goes.
            self.child = subprocess.Popen(
                self.command.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.command.env,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise LinkError(f"cannot start {self.command.argv[0]}: {exc}") from None
        assert self.child.stdin is not None and self.child.stdout is not None
        if self.command.max_memory_mb:
            limit = self.command.max_memory_mb * 1024 * 1024
            try:
                resource.prlimit(self.child.pid, resource.RLIMIT_DATA, (limit, limit))
            except OSError as exc:  # it exited already: the info request below says so
                log.debug("prlimit(%d): %s", self.child.pid, exc)
        os.set_blocking(self.child.stdin.fileno(), False)
        os.set_blocking(self.child.stdout.fileno(), False)
        self._buffer.clear()
        answer = self.request({"op": "info"}, time.monotonic() + START_TIMEOUT_S)
        try:
            return validate_info(answer.get("result"), self.label)
        except PluginLoadError as exc:
            raise LinkError(f"bad info: {exc}") from None

    def request(self, message: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Send one op and return its answer; a status other than 0 raises LinkError."""
        answer = self._exchange(orjson.dumps(message) + b"\n", deadline)
        if not isinstance(answer, dict) or answer.get("status") != 0:
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise LinkError(f"{message.get('op')} failed: {error}")
        return answer

    def call(self, entries: Sequence[Entry], deadline: float) -> list[Any]:
        line = b'{"batch":[' + entries_json(entries) + b"]" + ids_json(entries) + b"}\n"
        answer = self._exchange(line, deadline)
        if isinstance(answer, dict) and isinstance(answer.get("exiting"), str):
            self.exiting = answer["exiting"]
        return batch_results(answer, len(entries))

    def stream(self, entry: Entry, line_timeout_s: float) -> Iterator[tuple[Any, bool]]:
        """An ai plugin's ``(result, final)`` pairs for one entry as its lines arrive: the
        ``partial`` lines of §5, then the answer. Each line has ``line_timeout_s`` to come."""
        self._send(b'{"entry":' + entries_json([entry]) + b"}\n", time.monotonic() + 5)
        while True:
            answer = self._receive(time.monotonic() + line_timeout_s, last=False)
            if not isinstance(answer, dict) or "status" not in answer:
                raise LinkError(f"answered {str(answer)[:80]!r}, not a status object")
            if answer["status"] == 0 and "partial" in answer:
                yield answer["partial"], False
                continue
            if self._buffer:
                raise LinkError(f"answered more than one line: {bytes(self._buffer[:80])!r}")
            if answer["status"] != 0:
                raise PluginCallError(str(answer.get("error") or f"status {answer['status']}"))
            yield answer.get("result"), True
            return

    def _exchange(self, line: bytes, deadline: float) -> Any:
        self._send(line, deadline)
        return self._receive(deadline, last=True)

    def _send(self, line: bytes, deadline: float) -> None:
        child = self.child
        if child is None or child.stdin is None:
            raise LinkError("plugin process not running")
        try:
            write_all(child.stdin.fileno(), line, deadline, self.what)
        except LinkError as exc:
            raise LinkError(self._with_exit_status(str(exc))) from None

    def _receive(self, deadline: float, last: bool) -> Any:
        """The next answer line, parsed; ``last``: no other line may follow it."""
        child = self.child
        if child is None or child.stdout is None:
            raise LinkError("plugin process not running")
        try:
            answer = read_line(child.stdout.fileno(), self._buffer, deadline, self.what)
        except LinkError as exc:
            raise LinkError(self._with_exit_status(str(exc))) from None
        if last and self._buffer:  # one request, one line: more means the sides are out of step
            raise LinkError(f"answered more than one line: {bytes(self._buffer[:80])!r}")
        try:
            return orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise LinkError(f"answered invalid JSON: {answer[:80]!r}") from None

    def _with_exit_status(self, cause: str) -> str:
        """Add how the child died, if it did: ``...: killed by SIGSEGV``."""
        assert self.child is not None
        try:
            code = self.child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            return cause
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"{cause}: killed by {name}"
        return f"{cause}: exited with status {code}"

    def close(self) -> None:
        child, self.child, self.exiting = self.child, None, None
        if child is None:
            return
        if child.poll() is None:
            try:
                assert child.stdin is not None
                write_all(
                    child.stdin.fileno(),
                    b'{"op":"shutdown"}\n',
                    time.monotonic() + 0.1,
                    "plugin process",
                )
                child.stdin.close()
                child.wait(timeout=STOP_TIMEOUT_S)
            except (LinkError, OSError, subprocess.TimeoutExpired):
                child.kill()
                child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def load_in_child(
    command: HostCommand | Sequence[str],
    label: str,
    runtime: str,
    config: dict[str, Any],
    timeout_ms: int,
    types: Collection[str] | None = None,
    lang_config: dict[str, Any] | None = None,
) -> RemotePlugin | None:
    """Start a plugin in a child process; PluginLoadError (naming the cause) if it cannot.
    A lang plugin gets ``lang_config`` instead of ``config`` when given."""
    link = ChildLink(command, label)
    try:
        info = link.start()
        if types is not None and info.type not in types:
            link.close()
            return None
        if info.type == "lang" and lang_config is not None:
            config = lang_config
        link.initialise(config)
    except LinkError as exc:
        link.close()
        raise PluginLoadError(str(exc).removeprefix("info failed: cannot load plugin: ")) from None
    if link.sandbox_layers:
        log.info("Plugin '%s' sandboxed: %s", info.name, "; ".join(link.sandbox_layers))
    return RemotePlugin(link, info, label, runtime, config, timeout_ms)
