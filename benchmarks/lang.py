"""The filter worker with lang resolution off and on, over the same entries carrying lang_keys.

Every entry of the shared workload gets a ``lang_key`` (one of :data:`KEYS` texts, each with
three placeholders) and ``params`` for them; every other entry loses its ``message``, so the
stage must make one. Both figures run the real ``FilterStage`` with ``log_filter_severity``
(the DEBUG 40% are dropped, as in the plain figure); "on" adds ``lang_hot_reload`` over packs in
``en`` and ``zh`` written to the scratch directory, with ``lang.locales: [en, zh]``. Each run
starts with a cold cache. The output is checked: every forwarded entry of "on" has both texts
with its params filled in, and a message; "off" forwards the entries unchanged.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

import orjson
import redis

from benchmarks.figures import (
    Bench,
    BenchmarkError,
    Workload,
    check_filtered,
    load_stream,
    time_stage,
)
from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.stages.filter import FilterStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect

KEYS = 40
CPU_SECONDS: dict[str, list[float]] = {"lang_off": [], "lang_on": []}
"""CPU time of this process per run (Redis's is not in it): steadier than the wall clock on a
busy machine, and resolution is all on this side."""
EN = "Event {n} for user {user} from {ip}: done in {ms} ms"
ZH = "用户 {user}（来自 {ip}）的事件 {n}：耗时 {ms} 毫秒"


@cache
def lang_payloads(payloads: tuple[bytes, ...]) -> list[bytes]:
    """The workload's entries, each with a lang_key and its params; every other one without
    its message."""
    out = []
    for index, payload in enumerate(payloads):
        entry = orjson.loads(payload)
        entry["lang_key"] = f"bench.event_{index % KEYS}"
        entry["params"] = {"user": f"user{index % 97}", "ip": f"10.0.0.{index % 250}", "ms": index}
        if index % 2:
            del entry["message"]
        out.append(orjson.dumps(entry))
    return out


def write_packs(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for locale, text in (("en", EN), ("zh", ZH)):
        lines = [f'  event_{n}: "{text.replace("{n}", str(n))}"' for n in range(KEYS)]
        (directory / f"{locale}.yaml").write_text("bench:\n" + "\n".join(lines) + "\n")


def run_filter(bench: Bench, workload: Workload, lang: bool) -> float:
    packs = bench.workdir / "lang"
    write_packs(packs)
    enabled = ["log_filter_severity", *(["lang_hot_reload"] if lang else [])]
    config = parse_config(
        {
            "plugins": {"enabled": enabled},
            "stages": {"block_ms": 10},
            "lang": {"locales": ["en", "zh"], "default": "en", "packs_dir": str(packs)},
        }
    )
    client = connect(bench.url)
    plugins = load_plugins(config, types=["filter", "lang"])
    if [plugin.name for plugin in plugins] != enabled:
        raise BenchmarkError(f"loaded {[p.name for p in plugins]}, expected {enabled}")
    filters = [plugin for plugin in plugins if plugin.info.type == "filter"]
    langs = [plugin for plugin in plugins if plugin.info.type == "lang"]
    payloads = lang_payloads(tuple(workload.payloads))
    last_id = load_stream(client, config.keys.ingest, payloads)
    stage = FilterStage(config, filters, langs)
    cpu_started = time.process_time()
    elapsed = time_stage(
        StageLoop(client, stage, config.stages, config.stages.batch_size),
        config.keys.ingest,
        last_id,
        workload.count,
    )
    CPU_SECONDS["lang_on" if lang else "lang_off"].append(time.process_time() - cpu_started)
    for plugin in plugins:
        plugin.shutdown()
    figure = f"filter worker, lang {'on' if lang else 'off'}"
    check_filtered(client, config.keys.filtered, workload, figure)
    check_output(client, config.keys.filtered, lang, figure)
    client.close()
    return elapsed


def check_output(client: redis.Redis, stream: str, lang: bool, figure: str) -> None:
    for _id, fields in client.xrange(stream):
        entry = orjson.loads(fields[b"entry"])
        params = entry["params"]
        n = entry["lang_key"].rsplit("_", 1)[1]
        texts = entry.get("message_i18n")
        if not lang:
            if texts is not None:
                raise BenchmarkError(f"{figure}: resolved an entry with lang off: {entry}")
            continue
        expected = {locale: text.format(n=n, **params) for locale, text in (("en", EN), ("zh", ZH))}
        if texts != expected or "message" not in entry:
            raise BenchmarkError(f"{figure}: wrong texts {texts!r}, expected {expected!r}")


def lang_off(bench: Bench, workload: Workload) -> float:
    return run_filter(bench, workload, lang=False)


def lang_on(bench: Bench, workload: Workload) -> float:
    return run_filter(bench, workload, lang=True)
