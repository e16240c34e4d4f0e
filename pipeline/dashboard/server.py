"""The dashboard's web server: a Starlette app under uvicorn, on ``dashboard.host:port``.

Routes come from *route providers*: functions ``(Dashboard) -> list[BaseRoute]``, listed once
in :data:`ROUTE_PROVIDERS`. A feature that wants its own endpoints on this server (an editor
for lang packs, say) writes such a function in its own module, keeps its paths under its own
``/api/<noun>/`` prefix, and adds the function to that list; it gets the shared
:class:`~pipeline.dashboard.context.Dashboard` (config, Redis client, key names). A state-
changing endpoint should refuse what :func:`pipeline.dashboard.api.same_page_only` refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import BaseRoute

from pipeline.config import Config
from pipeline.dashboard import api
from pipeline.dashboard.context import Dashboard
from pipeline.errors import LogloomError
from pipeline.lang_editor import routes as lang_routes

log = logging.getLogger("logloom.dashboard")

RouteProvider = Callable[[Dashboard], Sequence[BaseRoute]]
ROUTE_PROVIDERS: list[RouteProvider] = [api.routes, lang_routes]
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
SHUTDOWN_GRACE_S = 3


def build_app(
    dashboard: Dashboard, providers: Sequence[RouteProvider] = ROUTE_PROVIDERS
) -> Starlette:
    """The ASGI app: every provider's routes, the sampler running for the app's lifetime."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        sampling = asyncio.create_task(dashboard.run_sampler(), name="dashboard-sampler")
        try:
            yield
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling

    return Starlette(
        routes=[route for provider in providers for route in provider(dashboard)],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(dashboard.config))
        ],
        lifespan=lifespan,
    )


def allowed_hosts(config: Config) -> list[str]:
    """Host headers to answer. On loopback only loopback names, so a web page that rebinds its
    own domain name to 127.0.0.1 cannot read the dashboard from the operator's browser."""
    host = config.dashboard.host
    if is_loopback(host):
        return sorted({*LOOPBACK_NAMES, host})
    return ["*"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def page_url(host: str, port: int) -> str:
    """The address to open: a wildcard host is shown as this machine's name."""
    shown = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so that a busy port is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise LogloomError(
            f"dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


def available_port(host: str, port: int) -> int:
    """``port`` if it can be listened on now, else a free one: ``logloom up`` passes it to its
    dashboard, so a second ``up`` on one machine still gets a dashboard (with a warning)."""
    try:
        with listen(host, port) as probe:
            return int(probe.getsockname()[1])
    except LogloomError as exc:
        with listen(host, 0) as probe:
            chosen = int(probe.getsockname()[1])
        log.warning("%s; the dashboard takes port %d instead", exc, chosen)
        return chosen


class _Server(uvicorn.Server):
    """uvicorn's server, telling the event streams to end when a stop signal comes."""

    def __init__(self, config: uvicorn.Config, dashboard: Dashboard) -> None:
        super().__init__(config)
        self.dashboard = dashboard

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.dashboard.closing = True
        super().handle_exit(sig, frame)


def serve(config: Config, url: str, host: str | None = None, port: int | None = None) -> int:
    """Serve the dashboard until SIGTERM or SIGINT (``logloom dashboard``)."""
    host = host or config.dashboard.host
    sock = listen(host, config.dashboard.port if port is None else port)
    dashboard = Dashboard(config, url)
    server = _Server(
        uvicorn.Config(
            build_app(dashboard),
            log_config=None,  # keep Logloom's one-line log format
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ),
        dashboard,
    )
    log.info(
        "Dashboard on %s (Redis %s)", page_url(host, sock.getsockname()[1]), dashboard.redis_shown
    )
    server.run(sockets=[sock])
    return 0
