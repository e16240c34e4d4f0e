"""``logloom metrics``: the queue figures on /metrics for deployments without ``logloom up``.

Workers started one by one (containers, systemd units) each serve their own counters, but the
queue figures (stream lengths, group lag, pending and oldest pending, DLQ sizes, RQ jobs and
workers) are the same whichever worker reads them: one exporter per Redis gives them once, so
alerts and autoscalers do not see them multiplied by the number of workers. Workers on one
machine that share ``PROMETHEUS_MULTIPROC_DIR`` with it are summed into its /metrics as well.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from pipeline import metrics
from pipeline.config import Config
from pipeline.embedded import resolve_url
from pipeline.errors import LogloomError
from pipeline.log import redact_url
from pipeline.streams import connect

log = logging.getLogger("logloom.metrics")


def run_exporter(config: Config) -> int:
    """Serve until SIGTERM or SIGINT; exit 0 then."""
    url = resolve_url(config)
    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = metrics.supervisor_registry(
        connect(url, config.redis.cluster), config.keys, multiprocess_dir
    )
    try:
        port = metrics.serve(config.metrics.port, config.metrics.host, registry)
    except OSError as exc:
        raise LogloomError(
            f"metrics: cannot bind {config.metrics.host}:{config.metrics.port}: {exc.strerror}"
        ) from None
    workers = f", and the workers writing to {multiprocess_dir}" if multiprocess_dir else ""
    log.info(
        "Metrics on http://%s:%d/metrics: queue figures of Redis %s%s",
        config.metrics.host,
        port,
        redact_url(url),
        workers,
    )
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    stop.wait()
    return 0
