"""Each plugin runtime for real: compiled .so files, child processes, sockets — and their faults."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import wait_for
from plugin_kit import (
    LOGLOOM,
    ROOT,
    build_bundled,
    compile_c,
    node_service,
    python_service,
    stop,
)

from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.entry import Entry, decode
from pipeline.health import GuardedPlugin
from pipeline.plugin import Failure
from pipeline.runtimes.process import load_in_child

pytestmark = pytest.mark.plugins
LEVELS = ["DEBUG", "INFO", "WARN", "ERROR", "FATAL", "VERBOSE"]


def entries(count: int, **fields: Any) -> list[Entry]:
    """Decoded entries, as a stage hands them to plugins (with their JSON kept)."""
    made = []
    for seq in range(count):
        raw = {"level": LEVELS[seq % 5], "module": "AUTH", "message": f"m{seq}", "seq": seq}
        raw.update(fields)
        made.append(decode(f"{seq + 1}-0".encode(), {b"entry": orjson.dumps(raw)}, 1 << 20)[0])
    return made


def load(tmp_path: Path, *enabled: str, **plugins: Any) -> list[GuardedPlugin]:
    failures: list[str] = []
    config = parse_config(
        {"plugins": {"enabled": list(enabled), "paths": [str(tmp_path)], **plugins}}
    )
    loaded = load_plugins(config, failures=failures)
    assert not failures, failures
    return loaded


def python_reference(batch: list[Entry], min_level: str = "INFO") -> list[bool]:
    rank = {"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3, "FATAL": 4}
    return [rank.get(entry["level"], 1) >= rank[min_level] for entry in batch]


# --- C in process --------------------------------------------------------------------------


def test_the_bundled_c_filter_built_with_cflags_matches_the_python_filter(tmp_path: Path) -> None:
    build_bundled(tmp_path, "filter_severity")
    (c_filter, py_filter) = load(
        tmp_path,
        "filter_severity",
        "log_filter_severity",
        config={
            "filter_severity": {"min_level": "warn"},
            "log_filter_severity": {"min_level": "WARN"},
        },
    )
    assert (c_filter.runtime, c_filter.info.version, c_filter.info.type) == ("c", "1.0.0", "filter")
    batch = entries(500)
    assert c_filter.call_batch(batch) == py_filter.call_batch(batch)
    assert c_filter.call_batch(batch) == python_reference(batch, "WARN")


def test_a_c_plugin_sees_every_field_as_the_header_says(tmp_path: Path) -> None:
    """Non-ASCII text, a missing module, a numeric one, lang_key NULL when absent, the JSON."""
    compile_c(
        tmp_path,
        "sink_fields.so",
        r"""
        static FILE *out;
        int plugin_configure(const char *json) {
            const char *at = strstr(json, "\"path\":\"");
            char path[512];
            if (!at) return -1;
            at += 8;
            size_t n = strcspn(at, "\"");
            memcpy(path, at, n); path[n] = 0;
            out = fopen(path, "w");
            return out ? 0 : -1;
        }
        int plugin_process(const log_entry_t *e) {
            fprintf(out, "%s|%s|%s|%s|%s|%s\n", e->timestamp, e->level, e->module, e->message,
                    e->lang_key ? e->lang_key : "(null)", e->json);
            fflush(out);
            return 0;
        }
        """,
    )
    out = tmp_path / "fields.txt"
    (sink,) = load(tmp_path, "sink_fields", config={"sink_fields": {"path": str(out)}})
    assert sink.info.type == "sink" and sink.name == "sink_fields"
    batch = [
        decode(b"1000-0", {b"entry": '{"level":"INFO","message":"héllo ✓"}'.encode()}, 1 << 20)[0],
        decode(b"2000-0", {b"level": b"WARN", b"module": b"7", b"lang_key": b"auth.login"}, 999)[0],
        Entry({"level": "ERROR", "module": 42, "message": "n", "timestamp": "T"}),
    ]
    assert sink.call_batch(batch) == [0, 0, 0]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("1970-01-01T00:00:01.000Z|INFO||héllo ✓|(null)|{")
    assert orjson.loads(lines[0].split("|", 5)[5]) == dict(batch[0])
    assert lines[1].split("|")[:5] == ["1970-01-01T00:00:02.000Z", "WARN", "7", "", "auth.login"]
    assert lines[2].split("|")[:5] == ["T", "ERROR", "42", "n", "(null)"]


def test_a_library_without_plugin_info_is_named_by_its_file_and_yaml(tmp_path: Path) -> None:
    source = "int plugin_process(const log_entry_t *e) { return e->message[0] == 'k'; }"
    compile_c(tmp_path, "filter_by_name.so", source)
    compile_c(tmp_path, "libkeeper.so", source)
    (tmp_path / "libkeeper.yaml").write_text("type: filter\nversion: 2.1.0\n")
    by_name, by_yaml = load(tmp_path, "filter_by_name", "keeper")
    assert (by_name.name, by_name.info.type, by_name.info.version) == (
        "filter_by_name",
        "filter",
        "0.0.0",
    )
    assert (by_yaml.name, by_yaml.info.type, by_yaml.info.version) == ("keeper", "filter", "2.1.0")
    assert by_yaml.call_batch([Entry({"message": "keep"}), Entry({"message": "drop"})]) == [
        True,
        False,
    ]


def test_a_library_missing_plugin_process_is_refused_with_the_exact_line(tmp_path: Path) -> None:
    compile_c(tmp_path, "filter_broken.so", "int plugin_proces(void) { return 1; }")
    config = tmp_path / "logloom.yaml"
    config.write_text(
        f"plugins:\n  enabled: [filter_broken]\n  paths: [{tmp_path}]\n"
        "redis:\n  url: redis://127.0.0.1:1/0\n"
    )
    result = subprocess.run(
        [*LOGLOOM, "--config", str(config), "validate"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    expected = "[WARN] Failed to load plugin 'filter_broken.so': missing plugin_process()"
    assert expected in result.stderr.splitlines()


def test_c_error_codes_are_failures_and_per_entry_calls_work_without_a_batch_symbol(
    tmp_path: Path,
) -> None:
    compile_c(
        tmp_path,
        "filter_codes.so",
        "int plugin_process(const log_entry_t *e) { return e->message[0] - '0' - 2; }",
    )
    (plugin,) = load(tmp_path, "filter_codes")
    results = plugin.call_batch([Entry({"message": m}) for m in ("3", "2", "0")])
    assert results[:2] == [True, False]
    assert isinstance(results[2], Failure) and "returned -2" in results[2].error


# --- isolated C and Python subprocess -------------------------------------------------------

SEGFAULTING = r"""
int plugin_process(const log_entry_t *e) {
    if (strcmp(e->message, "boom") == 0) raise(SIGSEGV);
    printf("stdout noise from C\n");
    return e->level[0] != 'D';
}
"""


def test_a_segfault_in_an_isolated_c_plugin_costs_only_its_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compile_c(tmp_path, "filter_crashy.so", SEGFAULTING)
    (plugin,) = load(tmp_path, "filter_crashy", settings={"filter_crashy": {"mode": "isolated"}})
    assert plugin.runtime == "c-isolated"
    batch = [Entry({"level": "INFO", "message": "a"}), Entry({"level": "DEBUG", "message": "b"})]
    batch += [Entry({"level": "INFO", "message": "boom"}), Entry({"level": "WARN", "message": "c"})]
    with caplog.at_level(logging.ERROR, "logloom.plugins"):
        results = plugin.call_batch(batch)
    assert results[:2] == [True, False] and results[3] is True
    assert isinstance(results[2], Failure) and "killed by SIGSEGV" in results[2].error
    assert plugin.restarts >= 1
    failed = [r.message for r in caplog.records if "Plugin communication failed" in r.message]
    assert len(failed) == 1, "one line per incident, not one per retry"
    assert failed[0].startswith("Plugin communication failed: filter_crashy: plugin process")
    assert failed[0].endswith("killed by SIGSEGV")
    assert plugin.call_batch(batch[:2]) == [True, False], "the restarted host works"
    plugin.shutdown()


def write_python_plugin(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import time
            PLUGIN_INFO = {{"name": "{name}", "version": "1.0.0", "type": "filter"}}
            def plugin_init(config): return 0
            def plugin_shutdown(): pass
            """
        )
        + textwrap.dedent(body)
    )
    return path


def test_python_subprocess_mode_survives_prints_hangs_and_crashes(tmp_path: Path) -> None:
    write_python_plugin(
        tmp_path,
        "filter_moody",
        """
        import os
        def plugin_process(entry):
            print("plugin output must not reach the protocol", entry)
            if entry["message"] == "hang":
                time.sleep(30)
            if entry["message"] == "die":
                os._exit(9)
            if entry["message"] == "raise":
                raise ValueError("cannot handle this one")
            return entry["message"].startswith("k")
        """,
    )
    (plugin,) = load(
        tmp_path,
        "filter_moody",
        python={"mode": "subprocess", "timeout": 200},
    )
    assert plugin.runtime == "python-subprocess"
    messages = ["k1", "x", "hang", "k2", "die", "raise", "k3"]
    results = plugin.call_batch([Entry({"level": "INFO", "message": m}) for m in messages])
    assert results[:2] == [True, False] and results[3] is True and results[6] is True
    assert isinstance(results[2], Failure) and "did not answer in time" in results[2].error
    assert isinstance(results[4], Failure) and "exited with status 9" in results[4].error
    assert results[5] == Failure("ValueError: cannot handle this one")
    assert plugin.restarts >= 2
    plugin.shutdown()


FAKE_CHILD = r"""
import sys, json
for line in sys.stdin:
    request = json.loads(line)
    if request.get("op") == "info":
        print(json.dumps({"status": 0, "result": {"name": "fake", "version": "1.0.0",
                                                  "type": "filter"}}), flush=True)
        continue
    if request.get("op") in ("init", "shutdown"):
        print('{"status": 0}', flush=True)
        continue
    batch = request["batch"]
    messages = {entry["message"] for entry in batch}
    if "garbage" in messages:
        print("this is not json", flush=True)
    elif "half" in messages:
        sys.stdout.write('{"status": 0, "resu'); sys.stdout.flush(); sys.exit(0)
    elif "huge" in messages:
        sys.stdout.write('{"status": 0, "results": ["' + "x" * (10 * 1024 * 1024) + '"]}\n')
        sys.stdout.flush()
    elif "short" in messages:
        print(json.dumps({"status": 0, "results": [], "errors": {}}), flush=True)
    else:
        print(json.dumps({"status": 0, "results": [True] * len(batch), "errors": {}}), flush=True)
"""


@pytest.mark.parametrize(
    ("message", "cause"),
    [
        ("garbage", "answered invalid JSON"),
        ("half", "after half a line"),
        ("huge", "over 8 MiB"),
        ("short", "answered 0 results for 1 entries"),
    ],
)
def test_a_child_that_talks_garbage_costs_only_that_entry(
    tmp_path: Path, message: str, cause: str
) -> None:
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    plugin = load_in_child([sys.executable, str(script)], str(script), "subprocess", {}, 2000)
    assert plugin is not None
    batch = [Entry({"message": m}) for m in ("ok1", message, "ok2")]
    results = plugin.call_batch(batch)
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], Failure) and cause in results[1].error, results[1]
    plugin.shutdown()


def test_plugins_run_serves_the_design_debugging_recipe() -> None:
    """design §9.5 / CONTRACT §5: echo an entry into `logloom plugins run` and read the answer."""
    result = subprocess.run(
        [*LOGLOOM, "plugins", "run", "plugins/python/log_filter_severity.py"],
        input='{"entry":{"level":"INFO","message":"test"}}\n',
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"status": 0, "result": true}\n'


def test_plugins_run_answers_every_request_of_the_protocol(tmp_path: Path) -> None:
    write_python_plugin(
        tmp_path,
        "filter_loud",
        """
        def plugin_process(entry):
            print("noise on stdout")
            if entry["message"] == "bad":
                raise KeyError("bad")
            return entry["level"] != "DEBUG"
        """,
    )
    requests = [
        {"op": "info"},
        {"op": "init", "config": {}},
        {"entry": {"level": "DEBUG", "message": "x"}},
        {"entry": {"level": "INFO", "message": "bad"}},
        {"batch": [{"level": "INFO", "message": "a"}, {"level": "INFO", "message": "bad"}, 7]},
        {"op": "shutdown"},
    ]
    result = subprocess.run(
        [*LOGLOOM, "plugins", "run", str(tmp_path / "filter_loud.py")],
        input="\n".join(orjson.dumps(r).decode() for r in requests) + "\nnot json\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    answers = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert answers[0]["result"]["name"] == "filter_loud"
    assert answers[1:4] == [
        {"status": 0},
        {"status": 0, "result": False},
        {"status": 1, "error": "KeyError: 'bad'"},
    ]
    assert answers[4] == {
        "status": 0,
        "results": [True, None, None],
        "errors": {"1": "KeyError: 'bad'", "2": "entry is not an object"},
    }
    assert answers[5] == {"status": 0} and len(answers) == 6, "stops after shutdown"
    assert "noise on stdout" in result.stderr


# --- services -------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [python_service, node_service], ids=["python", "node"])
def test_a_service_plugin_filters_like_the_python_plugin(tmp_path: Path, start: Any) -> None:
    sock = tmp_path / "svc.sock"
    service = start(sock)
    try:
        (plugin, reference) = load(
            tmp_path,
            "severity_service",
            "log_filter_severity",
            services={"severity_service": {"address": f"unix://{sock}"}},
            config={
                "severity_service": {"min_level": "WARN"},
                "log_filter_severity": {"min_level": "WARN"},
            },
        )
        assert plugin.runtime == "service" and plugin.info.name.startswith("severity_service")
        batch = entries(500)
        assert plugin.call_batch(batch) == reference.call_batch(batch)
        plugin.shutdown()
    finally:
        stop(service)


SERVICE_SESSION = """
import sys
if sys.argv[1] == "stdlib":
    sys.modules["orjson"] = None  # as where it is not installed: the import fails
sys.path.insert(0, sys.argv[2])
import severity_service
session = severity_service.Session()
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(session.handle_line(line))
"""


@pytest.mark.parametrize("json_library", ["stdlib", "orjson"])
def test_the_python_service_answers_alike_with_or_without_orjson(json_library: str) -> None:
    requests = [
        b'{"jsonrpc":"2.0","id":1,"method":"process_batch","params":{"entries":'
        b'[{"level":"DEBUG","message":"\xc3\xa9"},{"level":"ERROR"},7]}}',
        b'{"jsonrpc":"2.0","id":2,"method":"process","params":{"entry":{"level":NaN}}}',
        b"\xff\xfe not json",
    ]
    answered = subprocess.run(
        [sys.executable, "-c", SERVICE_SESSION, json_library, str(ROOT / "plugins" / "services")],
        input=b"\n".join(requests) + b"\n",
        capture_output=True,
        check=True,
    ).stdout.splitlines()
    answers = [orjson.loads(line) for line in answered]
    assert answers[0]["result"] == {
        "status": 0, "results": [False, True, None], "errors": {"2": "entry is not an object"}
    }  # fmt: skip
    assert answers[1]["error"]["code"] == -32700, "NaN is not JSON"
    assert answers[2]["error"]["code"] == -32700 and answers[2]["id"] is None


def test_a_service_that_dies_mid_batch_and_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock = tmp_path / "svc.sock"
    service = python_service(sock, LOGLOOM_SERVICE_CRASH_ON="crash")
    (plugin,) = load(
        tmp_path,
        "severity_service",
        services={"severity_service": {"address": f"unix://{sock}", "timeout_ms": 300}},
    )
    batch = entries(10)
    batch[4] = Entry({"level": "ERROR", "message": "crash"})
    with caplog.at_level(logging.ERROR, "logloom.plugins"):
        results = plugin.call_batch(batch)
    stop(service)
    assert len(results) == 10 and all(isinstance(r, (bool, Failure)) for r in results)
    assert isinstance(results[4], Failure)
    failed = [r for r in caplog.records if "Plugin communication failed" in r.message]
    assert len(failed) == 1, "one line per incident, not per entry"
    service = python_service(sock)
    try:
        later = entries(5)
        wait_for(
            lambda: not any(isinstance(r, Failure) for r in plugin.call_batch(later)),
            15,
            "the service to answer again",
        )
        assert plugin.call_batch(later) == python_reference(later)
        assert plugin.restarts >= 1
    finally:
        plugin.shutdown()
        stop(service)


def test_a_service_that_is_not_up_yet_fails_calls_until_it_is(tmp_path: Path) -> None:
    sock = tmp_path / "later.sock"
    (plugin,) = load(
        tmp_path,
        "severity_service",
        services={"severity_service": {"address": f"unix://{sock}"}},
    )
    (result,) = plugin.call_batch(entries(1))
    assert isinstance(result, Failure) and "cannot connect" in result.error


def test_a_python_plugin_can_call_a_c_plugin_through_the_workers_loader(tmp_path: Path) -> None:
    """design §5.5.10: Python plugins may call C plugins (via ``pipeline.load_plugin``)."""
    library = build_bundled(tmp_path / "c", "filter_severity")
    (tmp_path / "filter_wrapper.py").write_text(
        textwrap.dedent(
            f"""
            from pipeline import load_plugin
            PLUGIN_INFO = {{"name": "filter_wrapper", "version": "1.0.0", "type": "filter"}}
            native = None
            def plugin_init(config):
                global native
                native = load_plugin({str(library)!r}, {{"min_level": config["min_level"]}})
                return 0
            def plugin_process(entry):
                (keep,) = native.call_batch([entry])
                return keep and "secret" not in entry["message"]
            def plugin_shutdown():
                native.shutdown()
            """
        )
    )
    (wrapper,) = load(tmp_path, "filter_wrapper", config={"filter_wrapper": {"min_level": "ERROR"}})
    batch = [Entry({"level": level, "message": m}) for level, m in
             [("ERROR", "a"), ("WARN", "b"), ("FATAL", "secret c")]]  # fmt: skip
    assert wrapper.call_batch(batch) == [True, False, False]


def test_a_pretty_printed_entry_does_not_split_the_protocol_line(tmp_path: Path) -> None:
    """JSON may hold raw newlines; sent as is it would be two requests and every later answer
    would belong to the batch before it."""
    (plugin,) = load(tmp_path, "log_filter_severity", python={"mode": "subprocess"})
    pretty = decode(b"1-0", {b"entry": b'{\n  "level": "DEBUG",\n  "message": "a"\n}\n'}, 999)[0]
    for _ in range(3):
        batch = [pretty, *entries(4)]
        assert plugin.call_batch(batch) == [False, *python_reference(batch[1:])]
    plugin.shutdown()


def test_a_batch_function_that_leaves_results_unset_fails_those_entries(tmp_path: Path) -> None:
    compile_c(
        tmp_path,
        "filter_lazy.so",
        """
        int plugin_process(const log_entry_t *e) { (void)e; return 1; }
        int plugin_process_batch(const log_entry_t *e, size_t n, int *results) {
            (void)e;
            if (n > 0) results[0] = 1;
            return 0;
        }
        """,
    )
    (plugin,) = load(tmp_path, "filter_lazy")
    first, second = plugin.call_batch([Entry({"message": "a"}), Entry({"message": "b"})])
    assert first is True
    assert second == Failure("plugin_process_batch() set no result for this entry")


def test_plugins_run_streams_an_ai_plugins_partial_results(tmp_path: Path) -> None:
    """CONTRACT §5: an ai plugin may answer with partial lines before its final line."""
    (tmp_path / "ai_gen.py").write_text(
        textwrap.dedent(
            """
            PLUGIN_INFO = {"name": "ai_gen", "version": "1.0.0", "type": "ai"}
            def plugin_init(): return 0
            def analyze(entry):
                for word in entry["message"].split():
                    yield {"word": word}
            def plugin_shutdown(): pass
            """
        )
    )
    result = subprocess.run(
        [*LOGLOOM, "plugins", "run", str(tmp_path / "ai_gen.py")],
        input='{"entry": {"level": "INFO", "message": "a b c"}}\n',
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.stdout.splitlines() == [
        '{"status": 0, "partial": {"word": "a"}}',
        '{"status": 0, "partial": {"word": "b"}}',
        '{"status": 0, "result": {"word": "c"}}',
    ]


def test_readme_documents_every_field_of_a_hosted_batch(tmp_path: Path) -> None:
    from pipeline.runtimes.host import Host

    path = tmp_path / "sink_down.py"
    path.write_text(textwrap.dedent("""
        PLUGIN_INFO = {"name": "sink_down", "version": "1.0.0", "type": "sink"}
        def plugin_init(config): return 0
        def plugin_shutdown(): pass
        def plugin_process(entry):
            if entry.id == "7-0":
                raise ConnectionError("destination down")
            raise MemoryError(f"no memory for {entry.id}")
    """))  # fmt: skip
    request = {"batch": [{"level": "INFO"}, {"level": "INFO"}], "ids": ["7-0", "7-1"]}
    line, stop = Host(path, emit=lambda _line: None).answer(request)
    answer = orjson.loads(line)
    assert answer["unavailable"] == [0] and answer["exiting"] and not stop, answer
    assert answer["errors"]["1"] == "MemoryError: no memory for 7-1", "the host read the ids"
    readme = (ROOT / "README.md").read_text()
    runtimes = readme.split("### Runtimes:", 1)[1].split("\n### ", 1)[0]
    undocumented = [f for f in {*request, *answer} if f'"{f}"' not in runtimes]
    assert undocumented == [], "README, Runtimes: document these protocol fields"
