"""Output checks (design §7.4): a plugin's answer its type does not allow is a plugin error, its
entry goes to the DLQ saying what was wrong, and nothing of it is passed on; text a plugin or an
entry controls never forges a log line or sends a terminal escape."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socketserver
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from helpers import wait_for
from plugin_kit import build_bundled
from rq.worker import SimpleWorker

from pipeline import ai, outputs
from pipeline.config import CircuitConfig, PluginSettings, load_config, parse_config
from pipeline.discovery import load_plugins
from pipeline.entry import Entry, decode
from pipeline.health import GuardedPlugin
from pipeline.keys import Keys
from pipeline.log import SafeFormatter, one_line, one_line_json
from pipeline.plugin import Failure, PluginInfo
from pipeline.stages.ai import AiStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect

pytestmark = pytest.mark.plugins
KEYS = Keys()
FILTER_MUST = "a filter must return bool"
SINK_MUST = "a sink must return int (0 = delivered)"
AI_MUST = "an ai plugin must return a JSON object (dict)"


class Answers:
    """A plugin of any type whose answers, one per entry, the test sets."""

    runtime = "python"
    origin = "test"

    def __init__(self, kind: str, answers: Sequence[Any]) -> None:
        self.info = PluginInfo(name=f"{kind}_scripted", version="1.0.0", type=kind)
        self.answers = list(answers)

    @property
    def name(self) -> str:
        return self.info.name

    def call_batch(self, entries: Sequence[Entry]) -> list[Any]:
        return self.answers[: len(entries)]

    def shutdown(self) -> None:
        pass


def through_guard(kind: str, answers: Sequence[Any]) -> list[Any]:
    settings = PluginSettings(circuit=CircuitConfig(failures=1000, cooldown_s=1))
    guard = GuardedPlugin(Answers(kind, answers), settings, budget_ms=500)
    return guard.call_batch([Entry({"level": "INFO", "message": "m"})] * len(answers))


def errors(results: list[Any]) -> list[str | None]:
    return [r.error if isinstance(r, Failure) else None for r in results]


# --- The checks, through the guard every runtime's plugins run in.


def test_a_filter_must_answer_a_bool() -> None:
    results = through_guard("filter", [True, False, "yes", 1, None, 0.0])
    assert results[:2] == [True, False]
    assert errors(results)[2:] == [
        f"returned str, {FILTER_MUST}",
        f"returned int, {FILTER_MUST}",
        f"returned None, {FILTER_MUST}",
        f"returned float, {FILTER_MUST}",
    ]


def test_a_sink_must_answer_an_int_and_zero_is_delivered() -> None:
    results = through_guard("sink", [0, True, False, "ok", -1, 0.0])
    assert results[0] == 0
    assert errors(results)[1:] == [
        f"returned bool, {SINK_MUST}",
        f"returned bool, {SINK_MUST}",
        f"returned str, {SINK_MUST}",
        "returned -1, expected 0",
        f"returned float, {SINK_MUST}",
    ]


def test_an_ai_result_must_be_a_bounded_json_object_or_nothing() -> None:
    good = {"summary": "3 errors", "when": "now"}
    huge = {"blob": "x" * (1024 * 1024)}
    results = through_guard("ai", [good, None, ["a", "list"], huge, {"tags": {1, 2}}, {1: "x"}])
    assert results[:2] == [good, None]
    wrong = errors(results)[2:]
    assert wrong[0] == f"returned list, {AI_MUST}"
    assert wrong[1] == (
        f"returned {len(orjson.dumps(huge))} bytes of JSON, over the 65536-byte limit of an ai "
        "result"
    )
    assert wrong[2] is not None and wrong[2].startswith("returned a dict that is not JSON: ")
    assert "set" in wrong[2]
    assert wrong[3] is not None and wrong[3].startswith("returned a dict that is not JSON: ")
    limit = outputs.AI_RESULT_MAX_BYTES
    just_fits = {"b": "x" * (limit - len(b'{"b":""}'))}
    assert through_guard("ai", [just_fits]) == [just_fits]
    assert errors(through_guard("ai", [{"b": "x" * limit}]))[0] is not None


def test_a_lang_result_must_be_a_bounded_string_or_nothing() -> None:
    limit = outputs.LANG_RESULT_MAX_BYTES
    results = through_guard("lang", ["Anmeldung fehlgeschlagen", None, 42, "x" * (limit + 1)])
    assert results[:2] == ["Anmeldung fehlgeschlagen", None]
    assert errors(results)[2:] == [
        "returned int, a lang plugin must return str",
        f"returned {limit + 1} bytes of text, over the {limit}-byte limit of a lang result",
    ]
    wide = "é" * (limit // 2 + 1)  # fewer characters than the limit, more bytes
    assert errors(through_guard("lang", [wide]))[0] == (
        f"returned {limit + 2} bytes of text, over the {limit}-byte limit of a lang result"
    )


def test_a_plugins_error_text_is_made_one_line_and_cut() -> None:
    forged = "bad\n[ERROR] forged\r\x1b[2J\x1b]0;title\x07"
    results = through_guard("filter", [Failure(forged), Failure("x" * 5000), Failure("fine")])
    assert errors(results) == [
        "bad\\n[ERROR] forged\\r\\x1b[2J\\x1b]0;title\\x07",
        "x" * (outputs.ERROR_MAX_CHARS - 3) + "...",
        "fine",
    ]


def test_bad_results_count_as_failures_for_the_breaker_and_on_failure_pass() -> None:
    settings = PluginSettings(circuit=CircuitConfig(failures=2, cooldown_s=60), on_failure="pass")
    guard = GuardedPlugin(Answers("filter", ["yes"] * 3), settings, budget_ms=500)
    batch = [Entry({"level": "INFO", "message": "m"})] * 3
    assert guard.call_batch(batch) == [True] * 3, "on_failure: pass keeps the entries"
    guard.call_batch(batch)
    assert guard.failures == 6 and guard.state == "open"
    assert guard.last_error == f"returned str, {FILTER_MUST}"


def test_the_common_case_takes_the_fast_path() -> None:
    """All good results come back as the same list, not a copy checked one by one. (What the
    check costs is in the filter and sink worker figures of ``python -m benchmarks``.)"""
    for plugin_type, batch in (("filter", [True, False] * 500), ("sink", [0] * 1000)):
        screened, failures = outputs.screen(batch, plugin_type)
        assert screened is batch and failures == [], plugin_type


# --- Log injection: the helper, the log formatter, the bundled text sinks.


def test_one_line_escapes_every_control_character_and_keeps_the_rest() -> None:
    assert one_line("plain text, ünïcode, C:\\path") == "plain text, ünïcode, C:\\path"
    assert one_line("a\nb\rc\td\x00e\x1bf\x7fg\x85h\x9bi\u2028j") == (
        "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\x9bi\\u2028j"
    )
    text = '{"m":"\x7f\x9b\u2028 é"}'
    assert json.loads(one_line_json(text)) == json.loads(text)
    assert one_line_json(text) == '{"m":"\\u007f\\u009b\\u2028 é"}'


def test_the_log_formatter_keeps_every_record_on_one_line() -> None:
    record = logging.LogRecord(
        "logloom.filter",
        logging.ERROR,
        __file__,
        1,
        "Plugin %s: %s",
        ("p", "x\n[ERROR] forged\x1b[31m"),
        None,
    )
    line = SafeFormatter("[%(levelname)s] %(message)s").format(record)
    assert line == "[ERROR] Plugin p: x\\n[ERROR] forged\\x1b[31m"


def console_line(capsys: pytest.CaptureFixture[str], fmt: str, message: str) -> str:
    (plugin,) = load_plugins(
        parse_config(
            {"plugins": {"enabled": ["sink_console"], "config": {"sink_console": {"format": fmt}}}}
        )
    )
    entry = decode(
        b"1714478400123-0",
        {b"level": b"ERROR", b"module": b"A\rB", b"message": message.encode()},
        65536,
    )[0]
    assert plugin.call_batch([entry]) == [0]
    return capsys.readouterr().out


def test_the_console_sink_prints_one_line_per_entry(capsys: pytest.CaptureFixture[str]) -> None:
    forged = "login ok\n[ERROR] forged\r\x1b[2J\u2028done"
    out = console_line(capsys, "text", forged)
    assert out == (
        "2024-04-30T12:00:00.123Z ERROR [A\\rB] login ok\\n[ERROR] forged\\r\\x1b[2J\\u2028done\n"
    )
    out = console_line(capsys, "json", forged + "\x9b")
    assert out.count("\n") == 1 and "\x1b" not in out and "\x9b" not in out
    assert orjson.loads(out)["message"] == forged + "\x9b"


def test_the_jsonl_sink_writes_one_line_per_entry(tmp_path: Path) -> None:
    (plugin,) = load_plugins(
        parse_config(
            {
                "plugins": {
                    "enabled": ["sink_jsonl"],
                    "config": {"sink_jsonl": {"path": str(tmp_path / "o.jsonl")}},
                }
            }
        )
    )
    forged = 'a\n{"level":"ERROR","message":"forged"}\r\x1b[2J'
    entry = decode(b"1-0", {b"level": b"INFO", b"message": forged.encode()}, 65536)[0]
    assert plugin.call_batch([entry]) == [0]
    plugin.shutdown()
    data = (tmp_path / "o.jsonl").read_bytes()
    assert data.count(b"\n") == 1 and b"\x1b" not in data and b"\r" not in data
    assert orjson.loads(data)["message"] == forged


def test_the_c_file_sink_writes_an_entry_broken_over_lines_as_one_line(tmp_path: Path) -> None:
    """JSON allows raw line breaks between tokens, and the C sink writes an entry's JSON as it
    came: a nested object alone on a line would read as an entry of its own."""
    build_bundled(tmp_path / "plugins", "sink_file")
    out = tmp_path / "c.jsonl"
    config = {
        "plugins": {
            "paths": [str(tmp_path / "plugins")],
            "enabled": ["sink_file"],
            "config": {"sink_file": {"path": str(out)}},
        }
    }
    (plugin,) = load_plugins(parse_config(config))
    raw = b'{"level":"INFO","message":"x",\r\n"nested":\n{"level":"ERROR","message":"forged"}\n}'
    entries = [
        decode(b"1-0", {b"entry": raw}, 65536)[0],
        decode(b"1-1", {b"level": b"INFO", b"message": b"tab\there \x1b[2J"}, 65536)[0],
    ]
    assert plugin.call_batch(entries) == [0, 0]
    plugin.shutdown()
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3, lines
    assert [orjson.loads(line) for line in lines[:2]] == [dict(entry) for entry in entries]
    assert b"\n" in entries[0].to_json(), "the entry reached the sink with its line breaks"


# --- Real workers on a real Redis.


def produce(client: redis.Redis, messages: Sequence[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for seq, message in enumerate(messages):
        entry = {"level": "ERROR", "module": "M", "message": message, "seq": seq}
        pipe.xadd(KEYS.ingest, {"entry": orjson.dumps(entry)})
    pipe.execute()


def delivered(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


StreamItems = list[tuple[bytes, dict[bytes, bytes]]]


def dead_letters(client: redis.Redis, stage: str) -> list[dict[str, str]]:
    return [
        {key.decode(): value.decode() for key, value in fields.items()}
        for _, fields in cast(StreamItems, client.xrange(KEYS.dlq(stage)))
    ]


WRONG_FILTER = """
PLUGIN_INFO = {"name": "filter_wrong", "version": "1.0.0", "type": "filter"}
ANSWERS = {"yes": "yes", "one": 1, "none": None}
def plugin_init(): return 0
def plugin_process(entry):
    return ANSWERS.get(entry["message"], True)
def plugin_shutdown(): pass
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inprocess", "isolated"])
def test_a_filter_answering_the_wrong_type_sends_its_entries_to_the_dlq(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
    mode: str,
) -> None:
    """In a plugin host (isolated) the answer crossed a pipe as JSON: the same check, the same
    reasons."""
    write_plugin("filter_wrong", WRONG_FILTER)
    out = tmp_path / "out.jsonl"
    config = write_config(
        plugins={
            "enabled": ["filter_wrong", "sink_jsonl"],
            "settings": {"filter_wrong": {"mode": mode}},
            "config": {"sink_jsonl": {"path": str(out)}},
        }
    )
    messages = ["yes", "one", "none", "fine"] * 25
    produce(client, messages)
    workers.start(config, "filter")
    workers.start(config, "sink")
    wait_for(lambda: len(delivered(out)) == 25, 60, "the good entries")
    letters = wait_for(
        lambda: len(dead_letters(client, "filter")) == 75 and dead_letters(client, "filter"),
        10,
        "the DLQ",
    )
    reasons = collections.Counter(
        (letter["plugin"], orjson.loads(letter["entry"])["message"], letter["error"])
        for letter in letters
    )
    assert reasons == {
        ("filter_wrong", "yes", f"returned str, {FILTER_MUST}"): 25,
        ("filter_wrong", "one", f"returned int, {FILTER_MUST}"): 25,
        ("filter_wrong", "none", f"returned None, {FILTER_MUST}"): 25,
    }
    assert {entry["message"] for entry in delivered(out)} == {"fine"}, "nothing else passed on"
    assert client.xlen(KEYS.filtered) == 25
    assert "Plugin 'filter_wrong' failed on" in workers.output()
    assert f"returned str, {FILTER_MUST} (sent to {KEYS.dlq('filter')})" in workers.output()


WRONG_SINK = """
PLUGIN_INFO = {"name": "sink_wrong", "version": "1.0.0", "type": "sink"}
ANSWERS = {"true": True, "ok": "ok", "minus": -1}
def plugin_init(): return 0
def plugin_process(entry):
    return ANSWERS.get(entry["message"], 0)
def plugin_shutdown(): pass
"""


@pytest.mark.slow
def test_a_sink_answering_the_wrong_type_sends_its_entries_to_the_dlq(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
) -> None:
    write_plugin("sink_wrong", WRONG_SINK)
    config = write_config(
        plugins={"enabled": ["sink_wrong"]},
        sink={"retry": {"max_attempts": 2, "backoff_initial_ms": 20, "backoff_max_ms": 40}},
    )
    pipe = client.pipeline(transaction=False)
    messages = ["true", "ok", "minus", "fine"] * 10
    for seq, message in enumerate(messages):
        entry = {"level": "ERROR", "module": "M", "message": message, "seq": seq}
        entry["timestamp"] = "2025-04-30T12:00:00Z"
        pipe.xadd(KEYS.filtered, {"entry": orjson.dumps(entry)})
    pipe.execute()
    workers.start(config, "sink")
    letters = wait_for(
        lambda: len(dead_letters(client, "sink")) == 30 and dead_letters(client, "sink"),
        30,
        "the DLQ",
    )
    reasons = collections.Counter(
        (letter["plugin"], orjson.loads(letter["entry"])["message"], letter["error"])
        for letter in letters
    )
    assert reasons == {
        ("sink_wrong", "true", f"returned bool, {SINK_MUST}"): 10,
        ("sink_wrong", "ok", f"returned str, {SINK_MUST}"): 10,
        ("sink_wrong", "minus", "returned -1, expected 0"): 10,
    }
    assert all(letter["attempts"] == "2" for letter in letters)
    wait_for(
        lambda: client.xpending(KEYS.filtered, KEYS.sink_group("sink_wrong"))["pending"] == 0,
        10,
        "every entry acknowledged: delivered or dead-lettered",
    )


WRONG_AI = """
PLUGIN_INFO = {"name": "ai_wrong", "version": "1.0.0", "type": "ai"}
def plugin_init(): return 0
def analyze(entry):
    message = entry["message"]
    if message == "list":
        yield ["not", "an", "object"]
    elif message == "huge":
        yield {"blob": "x" * 1_000_000}
    elif message == "bad partial":
        yield {"summary": "a good start"}
        yield "then a string"
        yield {"summary": "never written"}
    elif message == "quiet":
        return
    else:
        yield {"summary": "fine: " + message}
def plugin_shutdown(): pass
"""


@pytest.mark.parametrize("mode", ["inprocess", "isolated"])
def test_an_ai_plugins_wrong_results_and_partials_send_their_entries_to_the_dlq(
    client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through RQ jobs as the ai worker runs them; isolated, the results cross a pipe first."""
    write_plugin("ai_wrong", WRONG_AI)
    plugins = {"enabled": ["ai_wrong"], "settings": {"ai_wrong": {"mode": mode}}}
    config = load_config(write_config(plugins=plugins, ai={"batch_size": 10, "retries": 0}))
    rq_client = redis.Redis.from_url(redis_url)
    stage = AiStage(config, rq_client, ["ai_wrong"])
    loop = StageLoop(connect(redis_url), stage, config.stages, 100)
    loop.ensure_groups()
    pipe = client.pipeline(transaction=False)
    messages = ["one", "list", "huge", "bad partial", "quiet", "two"]
    for seq, message in enumerate(messages):
        entry = {"level": "ERROR", "module": "M", "message": message, "seq": seq}
        pipe.xadd(KEYS.filtered, {"entry": orjson.dumps(entry)})
    pipe.execute()
    loop.step()
    stage.drain()
    try:
        with caplog.at_level(logging.ERROR, "logloom.ai"):
            SimpleWorker([stage.queue], connection=rq_client).work(burst=True)
    finally:
        ai.shutdown_plugins()
    items = cast(StreamItems, client.xrange(KEYS.ai_results))
    results = [orjson.loads(fields[b"result"]) for _, fields in items]
    assert results == [
        {"summary": "fine: one"},
        {"summary": "a good start"},  # streamed before the bad partial came
        {"summary": "fine: two"},
    ]
    letters = dead_letters(client, "ai")
    reasons = {orjson.loads(letter["entry"])["message"]: letter["error"] for letter in letters}
    huge = len(orjson.dumps({"blob": "x" * 1_000_000}))
    assert reasons == {
        "list": f"returned list, {AI_MUST}",
        "huge": f"returned {huge} bytes of JSON, over the 65536-byte limit of an ai result",
        "bad partial": f"partial result: returned str, {AI_MUST}",
    }
    assert {letter["plugin"] for letter in letters} == {"ai_wrong"}
    assert {letter["replay_to"] for letter in letters} == {KEYS.ai_replay}
    assert not client.zcard(f"rq:failed:{stage.queue.name}"), "the job itself succeeded"
    assert f"Plugin 'ai_wrong' failed on 1 entries: returned list, {AI_MUST}" in caplog.text


class EvilService(socketserver.StreamRequestHandler):
    """A service plugin (JSON-RPC lines) whose answers try log injection: an error with a line
    break and terminal escapes, and a wrong type."""

    FORGED = "bad input\n[ERROR] forged by a plugin\x1b]0;pwned\x07\x1b[2J"

    def handle(self) -> None:
        for line in self.rfile:
            request = json.loads(line)
            method, params = request["method"], request.get("params") or {}
            result: Any = {"status": 0}
            if method == "info":
                result = {"name": "evil_service", "version": "1.0.0", "type": "filter"}
            elif method == "process_batch":
                answers: list[Any] = []
                errors: dict[str, str] = {}
                for index, entry in enumerate(params["entries"]):
                    answers.append({"evil": None, "liar": "yes"}.get(entry["message"], True))
                    if entry["message"] == "evil":
                        errors[str(index)] = self.FORGED
                result = {"status": 0, "results": answers, "errors": errors}
            elif method == "shutdown":
                return
            answer = {"jsonrpc": "2.0", "id": request["id"], "result": result}
            self.wfile.write(json.dumps(answer).encode() + b"\n")


@contextlib.contextmanager
def evil_service(path: Path) -> Iterator[None]:
    server = socketserver.ThreadingUnixStreamServer(str(path), EvilService)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


RAISES = """
PLUGIN_INFO = {"name": "filter_raises", "version": "1.0.0", "type": "filter"}
def plugin_init(): return 0
def plugin_process(entry):
    if entry["message"] == "escape":
        raise ValueError("boom \\x1b[31mred\\x1b[0m \\x1b]0;pwned\\x07")
    return True
def plugin_shutdown(): pass
"""


@pytest.mark.slow
def test_no_entry_and_no_plugin_error_forges_a_log_line_or_sends_an_escape(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    """An entry printed by sink_console, a plugin's exception, a service's error text and its
    wrong answer: every worker line is its own, without one control character."""
    write_plugin("filter_raises", RAISES)
    sock = tmp_path / "evil.sock"
    config = write_config(
        plugins={
            "enabled": ["filter_raises", "evil_service", "sink_console"],
            "services": {"evil_service": {"address": f"unix://{sock}"}},
        }
    )
    forged_entry = "login ok\n[ERROR] forged by an entry\r\x1b[2J"
    with evil_service(sock):
        produce(client, [forged_entry, "escape", "evil", "liar", "the last entry"])
        workers.start(config, "filter")
        workers.start(config, "sink")
        wait_for(lambda: "the last entry" in workers.output(), 60, "the last entry printed")
        letters = wait_for(
            lambda: len(dead_letters(client, "filter")) == 3 and dead_letters(client, "filter"),
            10,
            "the DLQ",
        )
    reasons = {orjson.loads(letter["entry"])["message"]: letter for letter in letters}
    assert reasons["escape"]["error"] == (
        "ValueError: boom \\x1b[31mred\\x1b[0m \\x1b]0;pwned\\x07"
    )
    assert reasons["escape"]["plugin"] == "filter_raises"
    assert reasons["evil"]["error"] == (
        "bad input\\n[ERROR] forged by a plugin\\x1b]0;pwned\\x07\\x1b[2J"
    )
    assert reasons["liar"]["error"] == f"returned str, {FILTER_MUST}"
    assert reasons["evil"]["plugin"] == reasons["liar"]["plugin"] == "evil_service"
    output = b"".join(path.read_bytes() for path in sorted(tmp_path.glob("*.log")))
    text = output.decode()
    assert "login ok\\n[ERROR] forged by an entry\\r\\x1b[2J" in text, "printed, escaped"
    assert "failed on 1 entries: bad input\\n[ERROR] forged by a plugin" in text
    assert not any(line.startswith("[ERROR] forged") for line in text.splitlines())
    assert not [byte for byte in output if byte < 0x20 and byte not in b"\n"], "no control bytes"
