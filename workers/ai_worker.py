"""``logloom worker --stage ai``: the ai stage and an RQ worker for its jobs, in one process.

Run as many as wanted, on any machine that reaches the Redis: the stage readers share the
``ai`` consumer group and the RQ workers share the queue. The RQ worker is a ``SimpleWorker``:
jobs run in this process, so a plugin loads once and keeps its state from batch to batch (a
summariser's window, a template miner's clusters), and a job costs no fork (RQ's forking
``Worker`` manages ~45 jobs/s here against ~230). Isolation comes from elsewhere: a job that
raises or times out fails alone and is retried; a plugin that kills the process loses only the
job in hand, which RQ marks abandoned and the stage dead-letters once retries are spent; the
supervisor restarts the worker; and a plugin can run in its own host process with
``plugins.settings.<name>.mode: isolated`` (its results then arrive whole, without partials).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import redis
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.worker import SimpleWorker

from pipeline import ai, metrics
from pipeline.config import Config
from pipeline.discovery import load_plugins
from pipeline.embedded import resolve_url
from pipeline.errors import ConfigError
from pipeline.log import redact_url
from pipeline.stages.ai import AiStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect

log = logging.getLogger("logloom.worker")
SCHEDULER_INTERVAL_S = 1.0


def ai_plugin_names(config: Config) -> list[str]:
    """The enabled plugins of type ai (loaded once here to check them; jobs load their own)."""
    plugins = load_plugins(config, types=["ai"])
    names = [plugin.name for plugin in plugins]
    for plugin in plugins:
        plugin.shutdown()
    return names


def run_ai_worker(config: Config, metrics_port: int | None = None) -> int:
    """Run the ai stage and its RQ worker until signalled; ``metrics_port`` as for a stage
    worker (the jobs' plugin figures are counted in this process)."""
    if config.redis.cluster:
        raise ConfigError(
            f"{config.source}: redis.cluster: the ai stage needs a plain Redis (RQ, which runs "
            "its jobs, does not work on a Redis Cluster); run ai plugins in a deployment on one "
            "Redis, or disable them"
        )
    url = resolve_url(config)
    names = ai_plugin_names(config)
    if not names:
        log.error("AI worker: no ai plugin loaded; nothing to do (see plugins.enabled)")
        return 1
    metrics.serve_worker(metrics_port, config.metrics.host)
    stop = threading.Event()
    stage = AiStage(config, redis.Redis.from_url(url), names)
    loop = StageLoop(connect(url), stage, config.stages, config.stages.batch_size)
    reader = threading.Thread(target=loop.run, args=(stop,), name="ai-stage", daemon=True)
    reader.start()
    # Its own client: RQ sets a socket timeout on its client's pool for its blocking dequeue.
    rq_client = redis.Redis.from_url(url)
    worker = SimpleWorker([ai.queue_for(rq_client, config)], connection=rq_client)
    log.info(
        "AI worker %d: plugins %s, reading %s, running jobs of queue %s, Redis %s",
        os.getpid(), ", ".join(names), ", ".join(stage.streams), stage.queue.name, redact_url(url),
    )  # fmt: skip
    scheduler = threading.Thread(
        target=run_scheduler, args=(worker.queues, url, stop), name="rq-scheduler", daemon=True
    )
    scheduler.start()
    try:
        worker.work(logging_level="WARNING")  # SIGTERM: finish the job in hand, then return
    finally:
        stop.set()
        reader.join(timeout=30)
        ai.shutdown_plugins()
    return 0


def run_scheduler(queues: list[Queue], url: str, stop: threading.Event) -> None:
    """RQ's scheduler, which puts jobs whose retry backoff is over back on the queue, run in a
    thread here rather than in the process RQ forks for it: that process outlives a worker a
    plugin killed, and keeps the scheduler lock from the worker started in its place."""
    scheduler = RQScheduler(queues, connection=redis.Redis.from_url(url), interval=1)
    names = {queue.name for queue in queues}
    while not stop.wait(SCHEDULER_INTERVAL_S):
        try:
            if scheduler.acquired_locks != names:  # a dead holder's lock expires after 60 s
                scheduler.acquire_locks()
            if scheduler.acquired_locks:
                scheduler.heartbeat()
                scheduler.enqueue_scheduled_jobs()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("AI worker: RQ scheduler cannot reach Redis (%s); retrying", exc)
    with contextlib.suppress(redis.RedisError):
        scheduler.release_locks()
