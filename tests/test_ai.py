"""The ai stage on a real Redis with real RQ workers: batching, streamed results, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import wait_for
from rq.job import Job
from rq.worker import SimpleWorker

from pipeline import ai
from pipeline.config import load_config
from pipeline.keys import Keys
from pipeline.stages.ai import AiStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect

ROOT = Path(__file__).resolve().parent.parent
KEYS = Keys()

COUNTER = """
PLUGIN_INFO = {"name": "ai_words", "version": "1.0.0", "type": "ai"}
def plugin_init(): return 0
def analyze(entry):
    words = entry["message"].split()
    for n in range(1, len(words) + 1):
        yield {"summary": " ".join(words[:n]), "words": n}
def plugin_shutdown(): pass
"""


def filtered(client: redis.Redis, messages: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for seq, message in enumerate(messages):
        entry = {"level": "ERROR", "module": "AUTH", "message": message, "seq": seq}
        pipe.xadd(KEYS.filtered, {"entry": orjson.dumps(entry)})
    pipe.execute()


def results(client: redis.Redis) -> list[dict[str, Any]]:
    return [
        {key.decode(): value.decode() for key, value in fields.items()}
        for _, fields in client.xrange(KEYS.ai_results)
    ]


@pytest.mark.parametrize("mode", ["inprocess", "isolated"])
def test_batches_become_jobs_whose_partial_results_stream_before_the_final(
    client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    mode: str,
) -> None:
    """In a plugin host (isolated) the partials come as §5 ``partial`` lines: same results."""
    write_plugin("ai_words", COUNTER)
    plugins = {"enabled": ["ai_words"], "settings": {"ai_words": {"mode": mode}}}
    config = load_config(write_config(plugins=plugins, ai={"batch_size": 3, "retries": 0}))
    rq_client = redis.Redis.from_url(redis_url)
    stage = AiStage(config, rq_client, ["ai_words"])
    loop = StageLoop(connect(redis_url), stage, config.stages, 100)
    loop.ensure_groups()
    filtered(client, ["auth failed", "disk full now", "ok", "x y", "last one"])
    loop.step()
    loop.step()  # the batch's acks travel with the next read
    assert stage.queue.count == 1, "3 entries make a batch; 2 wait for more or the interval"
    assert client.xpending(KEYS.filtered, "ai")["pending"] == 2, "enqueued entries are acked"
    stage.drain()
    assert stage.queue.count == 2
    SimpleWorker([stage.queue], connection=rq_client).work(burst=True)
    (plugin,) = ai._plugins.values()
    assert plugin.runtime == {"inprocess": "python", "isolated": "python-subprocess"}[mode]
    ai.shutdown_plugins()  # stops an isolated plugin's host process

    got = results(client)
    assert [r["result"] for r in got][:5] == [
        '{"summary":"auth","words":1}',
        '{"summary":"auth failed","words":2}',
        '{"summary":"disk","words":1}',
        '{"summary":"disk full","words":2}',
        '{"summary":"disk full now","words":3}',
    ]
    assert [r["final"] for r in got][:5] == ["0", "1", "0", "0", "1"]
    first_job = got[0]["job"]
    assert [int(r["seq"]) for r in got if r["job"] == first_job] == list(range(1, 7))
    assert {r["plugin"] for r in got} == {"ai_words"}
    ids = [orjson.loads(r["source_ids"])[0] for r in got]
    stream_ids = [i.decode() for i, _ in client.xrange(KEYS.filtered)]
    assert ids[0] == ids[1] == stream_ids[0] and ids[-1] == stream_ids[-1]


def test_the_stage_reads_no_more_while_rq_is_behind(
    client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
) -> None:
    write_plugin("ai_words", COUNTER)
    config = load_config(
        write_config(plugins={"enabled": ["ai_words"]}, ai={"batch_size": 2, "max_queued_jobs": 2})
    )
    stage = AiStage(config, redis.Redis.from_url(redis_url), ["ai_words"])
    loop = StageLoop(connect(redis_url), stage, config.stages, 2)
    loop.ensure_groups()
    filtered(client, [f"m{n}" for n in range(20)])
    for _ in range(10):
        loop.step()
    assert stage.queue.count == 2, "stops reading at ai.max_queued_jobs"
    info = client.xinfo_groups(KEYS.filtered)[0]
    assert info["pending"] == 0 and info["lag"] == 16, "what it read is enqueued, no more"


FAILURES = {  # what each plugin does on the entry "bad"
    "ai_raises": 'raise ValueError("cannot analyse this")',
    "ai_hangs": "time.sleep(60)",
    "ai_kills": "os._exit(3)",
}


def failing_plugin(name: str) -> str:
    return f"""
import os, time
PLUGIN_INFO = {{"name": "{name}", "version": "1.0.0", "type": "ai"}}
def plugin_init(): return 0
def analyze(entry):
    if entry["message"] == "bad":
        {FAILURES[name]}
    return {{"summary": "fine: " + entry["message"]}}
def plugin_shutdown(): pass
"""


def start_ai_worker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """From the repository root: the design's log_ai_summary reads its YAML from there."""
    command = [sys.executable, "-m", "pipeline.cli", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k not in ("LOGLOOM_REDIS_URL", "REDIS_URL")}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*command, "worker", "--stage", "ai"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.mark.slow
@pytest.mark.parametrize("plugin", sorted(FAILURES))
def test_a_failing_job_ends_in_the_ai_dlq_after_its_retries_and_the_next_jobs_run(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    tmp_path: Path,
    plugin: str,
) -> None:
    write_plugin(plugin, failing_plugin(plugin))
    config = write_config(
        plugins={"enabled": [plugin]},
        ai={
            "batch_size": 2,
            "flush_interval_ms": 200,
            # A killed worker's job is found abandoned only 60 s past its heartbeat (RQ): one
            # retry of that would double the test's time, so ai_kills gets none.
            "retries": 0 if plugin == "ai_kills" else 1,
            "retry_intervals_s": [1],
            "job_timeout_s": 2,
            "failed_sweep_interval_s": 0.5,
        },
    )
    log = tmp_path / "ai.log"
    workers = [start_ai_worker(config, log)]
    try:
        filtered(client, ["good 1", "bad"])

        def dead_letters() -> list[Any]:
            if workers[-1].poll() is not None:  # killed by the plugin: restart, as `up` does
                workers.append(start_ai_worker(config, log))
            return client.xrange(KEYS.dlq("ai"))

        # RQ declares a job abandoned 60 s past its heartbeat once its worker died: ai_kills waits.
        letters = wait_for(dead_letters, 150, "the batch in the ai DLQ")
        assert sorted(orjson.loads(f[b"entry"])["message"] for _, f in letters) == ["bad", "good 1"]
        fields = letters[0][1]
        assert fields[b"plugin"] == plugin.encode() and fields[b"stage"] == b"ai"
        attempts = b"1" if plugin == "ai_kills" else b"2"
        assert fields[b"attempts"] == attempts and fields[b"replay_to"] == KEYS.ai_replay.encode()
        expected = {
            "ai_raises": b"ValueError: cannot analyse this",
            "ai_hangs": b"JobTimeoutException",
            "ai_kills": b"AbandonedJobError",
        }[plugin]
        assert expected in fields[b"error"], fields[b"error"]
        filtered(client, ["good 2", "good 3"])
        wait_for(
            lambda: any(b"good 3" in f[b"result"] for _, f in client.xrange(KEYS.ai_results)),
            60,
            "the next job's results",
        )
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
                worker.wait()


@pytest.mark.slow
def test_the_designs_log_ai_summary_runs_unchanged_and_ai_tail_shows_it(
    client: redis.Redis, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """design §5.5.9's plugin, verbatim, reading plugins/python/log_ai_summary.yaml itself."""
    config = write_config(
        plugins={"enabled": ["log_ai_summary"]}, ai={"batch_size": 50, "flush_interval_ms": 100}
    )
    worker = start_ai_worker(config, tmp_path / "ai.log")
    try:
        filtered(client, ["auth failed"] * 3 + ["disk full"] * 2)
        wait_for(lambda: client.xlen(KEYS.ai_results), 30, "the summary")
        tail = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "ai", "tail", "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )
        assert tail.returncode == 0, tail.stderr
        (line,) = tail.stdout.splitlines()  # one summary an hour (summary_interval: 3600)
        shown = orjson.loads(line)
        assert shown["plugin"] == "log_ai_summary" and shown["final"] == "1"
        assert shown["result"]["summary"] == "过去60分钟内共记录1条日志"
        assert shown["result"]["statistics"] == {"ERROR": 1}
        assert shown["result"]["has_errors"] is True
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


@pytest.mark.slow
def test_two_ai_workers_share_the_queue_and_every_batch_is_analysed_once(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    tmp_path: Path,
) -> None:
    write_plugin(
        "ai_slow_echo",
        """
import time
PLUGIN_INFO = {"name": "ai_slow_echo", "version": "1.0.0", "type": "ai"}
def plugin_init(): return 0
def analyze(entry):
    time.sleep(0.01)
    return {"summary": entry["message"]}
def plugin_shutdown(): pass
""",
    )
    config = write_config(
        plugins={"enabled": ["ai_slow_echo"]}, ai={"batch_size": 10, "flush_interval_ms": 100}
    )
    workers = [start_ai_worker(config, tmp_path / f"ai-{n}.log") for n in range(2)]
    try:
        filtered(client, [f"m{n}" for n in range(400)])
        wait_for(lambda: client.xlen(KEYS.ai_results) >= 400, 60, "every entry analysed")
        got = client.xrange(KEYS.ai_results)
        messages = [orjson.loads(fields[b"result"])["summary"] for _, fields in got]
        assert sorted(messages) == sorted(f"m{n}" for n in range(400)), "each exactly once"
        queue = ai.queue_for(client, load_config(config))
        finished = queue.finished_job_registry.get_job_ids()
        ran_on = {Job.fetch(job_id, connection=client).worker_name for job_id in finished}
        assert len(finished) == 40 and len(ran_on) == 2, "both workers took jobs"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
