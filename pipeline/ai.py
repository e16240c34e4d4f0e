"""AI analysis as RQ jobs: what runs in ``logloom worker --stage ai``, and its results stream.

The ai stage (:mod:`pipeline.stages.ai`) hands batches of entries to RQ jobs that run
:func:`analyze_batch`. The job feeds each entry to the ai plugin (``analyze(entry)`` or
``plugin_process(entry)``, CONTRACT §3) and XADDs every result to ``logloom:ai:results`` the
moment it exists: a generator's yields as partial results, then a final one. Each result,
partial or final, must pass the output check (:func:`pipeline.outputs.encode_ai_result`: a JSON
object of at most 64 KiB); the first that does not sends its entry to ``logloom:dlq:ai`` with
the reason, and nothing more of that entry's results is written. A job that raises
or times out is retried by RQ; when its retries are spent RQ keeps it in its failed registry
(traceback included) and :func:`dead_letter_failed_jobs` moves its entries to
``logloom:dlq:ai``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, cast

import orjson
import redis
from redis.typing import EncodableT, FieldT
from rq import get_current_job
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from pipeline import dlq
from pipeline.config import Config, load_config
from pipeline.discovery import load_one
from pipeline.entry import Entry
from pipeline.errors import PluginCallError
from pipeline.keys import Keys
from pipeline.log import one_line
from pipeline.metrics import AI_JOB_SECONDS, AI_RESULTS, DEAD_LETTERS, PLUGIN_ERRORS
from pipeline.outputs import BadOutput, clean_error, encode_ai_result
from pipeline.plugin import Failure, Plugin
from pipeline.runtimes.python import PythonPlugin

log = logging.getLogger("logloom.ai")

RESULTS_MAX_LEN = 100_000
"""``logloom:ai:results`` keeps about this many results (XADD MAXLEN ~)."""

_plugins: dict[tuple[str, str], Plugin] = {}  # per worker process: plugins keep their state


def plugin_for(name: str, config_source: str) -> Plugin:
    """The ai plugin ``name``, loaded once per worker process (a summariser's memory of earlier
    batches survives from one job to the next)."""
    key = (name, config_source)
    if key not in _plugins:
        config = load_config(None if config_source == "<defaults>" else config_source)
        plugin = load_one(name, config, ["ai"])
        if plugin is None:
            raise PluginCallError(f"plugin '{name}' is not an ai plugin")
        _plugins[key] = plugin
    return _plugins[key]


def shutdown_plugins() -> None:
    for plugin in _plugins.values():
        plugin.shutdown()
    _plugins.clear()


def is_nothing(result: Any) -> bool:
    """The design's ``{"summary": None}`` (and None, {}) means "nothing to say yet"."""
    return result is None or result == {} or result == {"summary": None}


def results_of(plugin: Plugin, entry: Entry) -> Iterator[tuple[Any, bool]]:
    """``(result, final)`` pairs for one entry, as the plugin produces them.

    An in-process Python plugin's generator is iterated as it yields (partials, then the last
    yield is final); a plugin in a host process sends the same as §5 ``partial`` lines; a
    service answers once.
    """
    stream = getattr(plugin, "stream", None)
    if stream is not None:
        yield from stream(entry)
        return
    if isinstance(plugin, PythonPlugin) and plugin.entry_hook is not None:
        answer = plugin.entry_hook(entry)
        if not isinstance(answer, Iterator):
            yield answer, True
            return
        previous: Any = None
        started = False
        for part in answer:
            if started:
                yield previous, False
            previous, started = part, True
        if started:
            yield previous, True
        return
    (answer,) = plugin.call_batch([entry])
    if isinstance(answer, Failure):
        raise PluginCallError(answer.error)
    yield answer, True


def analyze_batch(
    plugin_name: str,
    entries: Sequence[bytes],
    ids: Sequence[str],
    prefix: str,
    config_source: str,
    sources: Sequence[str] | None = None,
) -> int:
    """The RQ job: run one ai plugin over a batch, streaming each result. Returns how many.

    ``sources``: each entry's stream, when there are several (partitions)."""
    started = time.perf_counter()
    job = get_current_job()
    assert job is not None, "runs as an RQ job"
    plugin = plugin_for(plugin_name, config_source)
    keys = Keys(prefix)
    connection: redis.Redis = job.connection
    seq = 0
    rejected: Counter[str] = Counter()
    streams = sources or [keys.filtered] * len(ids)
    for raw, source_id, stream in zip(entries, ids, streams, strict=True):
        entry = Entry(orjson.loads(raw))
        wrong: str | None = None
        for result, final in results_of(plugin, entry):
            if wrong is not None or is_nothing(result):
                continue  # after a bad result the rest are read (a host's lines) and dropped
            try:
                data = encode_ai_result(result)
            except BadOutput as exc:
                wrong = one_line(str(exc) if final else f"partial result: {exc}")
                continue
            seq += 1
            connection.xadd(
                keys.ai_results,
                {
                    "plugin": plugin_name,
                    "job": job.id,
                    "seq": seq,
                    "final": int(final),
                    "source_ids": orjson.dumps([source_id]),
                    "result": data,
                    "produced_at": f"{time.time():.3f}",
                },
                maxlen=RESULTS_MAX_LEN,
                approximate=True,
            )
            AI_RESULTS.labels(plugin_name, str(int(final))).inc()
        if wrong is not None:
            rejected[wrong] += 1
            letter = ai_letter(keys, plugin_name, raw, source_id, wrong, 1, stream)
            connection.xadd(keys.dlq("ai"), letter)
    if rejected:
        _report_rejected(plugin_name, rejected, keys)
    AI_JOB_SECONDS.labels(plugin_name).observe(time.perf_counter() - started)
    return seq


def ai_letter(
    keys: Keys,
    plugin: str,
    raw: bytes,
    source_id: bytes | str,
    error: str,
    attempts: int,
    source_stream: str,
) -> dict[FieldT, EncodableT]:
    """A dead letter of the ai stage: replayed to ``logloom:ai:replay``, read only by it."""
    return dlq.letter(
        raw,
        error=error,
        plugin=plugin,
        stage="ai",
        attempts=attempts,
        source_stream=source_stream,
        source_id=source_id,
        replay_to=keys.ai_replay,
    )


def _report_rejected(plugin_name: str, rejected: Counter[str], keys: Keys) -> None:
    """Metrics, and one ``[ERROR]`` line per distinct reason in the job (not one per entry)."""
    total = sum(rejected.values())
    PLUGIN_ERRORS.labels(plugin_name, "ai").inc(total)
    DEAD_LETTERS.labels("ai", plugin_name).inc(total)
    for reason, count in rejected.items():
        log.error(
            "Plugin '%s' failed on %d entries: %s (sent to %s)",
            plugin_name, count, reason, keys.dlq("ai"),
        )  # fmt: skip


def last_error(job: Job) -> str:
    """The last line of the job's traceback (``TimeoutError: ...``), or why there is none; made
    safe to show (:func:`pipeline.outputs.clean_error`): a plugin's exception wrote it."""
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return clean_error(lines[-1].strip()) if lines else "job failed (the worker running it died)"


def dead_letter_failed_jobs(client: redis.Redis, queue: Queue, keys: Keys, attempts: int) -> int:
    """Move the entries of jobs RQ gave up on to ``logloom:dlq:ai``, once per job; how many.

    Abandoned jobs (their worker died) are first moved to the failed registry by RQ's own
    clean-up. The jobs stay in RQ's failed registry, tracebacks and all.
    """
    StartedJobRegistry(queue=queue).cleanup()
    moved = 0
    for job_id in FailedJobRegistry(queue=queue).get_job_ids():
        job = Job.fetch(job_id, connection=queue.connection)
        if job.meta.get("dead_lettered") or job.func_name != f"{__name__}.analyze_batch":
            continue
        plugin_name, entries, ids, _prefix, _source = job.args
        streams = job.kwargs.get("sources") or [keys.filtered] * len(ids)
        error = last_error(job)
        pipe = client.pipeline(transaction=True)
        for raw, source_id, stream in zip(entries, ids, streams, strict=True):
            letter = ai_letter(keys, plugin_name, raw, source_id, error, attempts, stream)
            pipe.xadd(keys.dlq("ai"), letter)
        pipe.execute()
        job.meta["dead_lettered"] = True
        job.save_meta()  # type: ignore[no-untyped-call]
        moved += len(entries)
        log.error(
            "AI job %s (%s) failed after %d attempts: %s; %d entries sent to %s",
            job.id, plugin_name, attempts, error, len(entries), keys.dlq("ai"),
        )  # fmt: skip
    return moved


ResultItem = tuple[bytes, dict[bytes, bytes]]


def read_results(
    client: redis.Redis, keys: Keys, count: int, plugin: str | None, follow: bool
) -> Iterator[ResultItem]:
    """The newest ``count`` results (of ``plugin``), oldest first; with ``follow``, then every
    new one as it arrives, until interrupted."""

    def wanted(item: ResultItem) -> bool:
        return plugin is None or item[1].get(b"plugin") == plugin.encode()

    stream = keys.ai_results
    newest = cast(list[ResultItem], client.xrevrange(stream, count=max(count, 1) * 4))
    yield from [item for item in reversed(newest) if wanted(item)][-count:] if count > 0 else []
    last = newest[0][0] if newest else b"0-0"
    while follow:
        reply = cast(list[tuple[bytes, list[ResultItem]]], client.xread({stream: last}, block=1000))
        for _, items in reply or []:
            for item in items:
                last = item[0]
                if wanted(item):
                    yield item


def result_dict(item: ResultItem) -> dict[str, Any]:
    """One result as JSON-ready data: its fields, the stream ``id``, and ``result`` parsed
    (what ``logloom ai tail --json`` prints and the dashboard shows)."""
    stream_id, fields = item
    data = {key.decode(): value.decode(errors="replace") for key, value in fields.items()}
    try:
        result = orjson.loads(data.get("result", "null"))
    except orjson.JSONDecodeError:  # written by hand into the stream: shown as it is
        result = data.get("result")
    return {**data, "id": stream_id.decode(), "result": result}


def queue_for(client: redis.Redis, config: Config) -> Queue:
    return Queue(config.keys.ai_queue, connection=client, default_timeout=config.ai.job_timeout_s)
