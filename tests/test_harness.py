"""``logloom plugins test``: each kind of contract violation is caught and named, and good
plugins of every type pass in every runtime they run in."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from plugin_kit import LOGLOOM, ROOT, compile_c

from pipeline.config import Config
from pipeline.harness import Report, check_plugin, render

pytestmark = pytest.mark.plugins

HEADER = """\
PLUGIN_INFO = {"name": "filter_planted", "version": "1.0.0", "type": "filter", "api": ">=1.0,<2"}
def plugin_init(config): return 0
def plugin_shutdown(): pass
"""

GOOD_FILTER = HEADER + 'def plugin_process(entry): return entry["level"] != "DEBUG"\n'

# (what is planted, the plugin's code, the check that must fail, words its detail must hold)
VIOLATIONS = [
    (
        "bad metadata",
        GOOD_FILTER.replace('"type": "filter", ', ""),
        ("contract", "metadata"),
        "PLUGIN_INFO lacks type",
    ),
    (
        "bad SemVer",
        GOOD_FILTER.replace('"1.0.0"', '"1.0"'),
        ("contract", "version is SemVer"),
        "'1.0' is not SemVer",
    ),
    (
        "missing function",
        GOOD_FILTER.replace("def plugin_shutdown(): pass\n", ""),
        ("contract", "required functions"),
        "missing plugin_shutdown()",
    ),
    (
        "API range this Logloom does not offer",
        GOOD_FILTER.replace(">=1.0,<2", ">=2.0"),
        ("contract", "metadata"),
        "needs Logloom plugin API >=2.0",
    ),
    (
        "init refuses",
        GOOD_FILTER.replace("def plugin_init(config): return 0", "def plugin_init(c): return 1"),
        ("contract", "plugin_init"),
        "plugin_init() returned 1, expected 0",
    ),
    (
        "wrong return type",
        HEADER + 'def plugin_process(entry): return "yes"\n',
        ("inprocess", "60 generated entries"),
        "returned str, a filter must return bool",
    ),
    (
        "crash on unicode",
        HEADER + 'def plugin_process(entry): return bool(entry["module"].encode("ascii"))\n',
        ("inprocess", "unicode"),
        "UnicodeEncodeError",
    ),
    (
        "crash on a huge message",
        HEADER
        + "def plugin_process(entry):\n"
        + '    if len(entry["message"]) > 10_000: raise ValueError("too long to parse")\n'
        + "    return True\n",
        ("inprocess", "huge message"),
        "ValueError: too long to parse",
    ),
    (
        "crash on missing fields",
        HEADER + 'def plugin_process(entry): return entry["host"] != "web-0"\n',
        ("inprocess", "guaranteed fields only"),
        "KeyError: 'host'",
    ),
    (
        "crash without a message",
        HEADER + 'def plugin_process(entry): return "health" not in entry["message"]\n',
        ("inprocess", "lang_key only"),
        "KeyError: 'message'",
    ),
    (
        "too slow",
        HEADER
        + "import time\ndef plugin_process(entry):\n    time.sleep(0.005)\n    return True\n",
        ("inprocess", "latency"),
        "budget 2 ms",
    ),
    (
        "leaking memory",
        HEADER
        + "LEAK = []\ndef plugin_process(entry):\n"
        + '    LEAK.append(b"x" * 131072)\n    return True\n',
        ("inprocess", "memory"),
        "at most 8",
    ),
]


def plant(directory: Path, source: str, name: str = "filter_planted.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(source)
    return path


def failed(report: Report) -> dict[tuple[str, str], str]:
    return {(check.where, check.what): check.detail for check in report.failures}


@pytest.mark.parametrize(
    ("source", "check", "detail"),
    [pytest.param(source, check, detail, id=kind) for kind, source, check, detail in VIOLATIONS],
)
def test_the_harness_catches_a_planted_violation(
    tmp_path: Path, source: str, check: tuple[str, str], detail: str
) -> None:
    plugin = plant(tmp_path, source)
    budget_ms = 2 if check[1] == "latency" else None  # a loaded machine's p99 passes 2 ms
    report = check_plugin(plugin, runtimes="inprocess", calls=150, budget_ms=budget_ms)
    assert check in failed(report), render(report)
    assert detail in failed(report)[check], render(report)
    assert f"  - {check[0]}: {check[1]}: " in render(report)


def test_a_leak_in_a_plugin_host_is_caught_by_its_resident_memory(tmp_path: Path) -> None:
    source = next(case[1] for case in VIOLATIONS if case[0] == "leaking memory")
    report = check_plugin(plant(tmp_path, source), runtimes="isolated", calls=150)
    assert list(failed(report)) == [("isolated", "memory")], render(report)
    assert "host peak" in failed(report)["isolated", "memory"]


def test_a_crash_in_an_isolated_c_plugin_costs_the_entry_not_the_harness(tmp_path: Path) -> None:
    library = compile_c(
        tmp_path,
        "filter_crashy.so",
        """
        int plugin_process(const log_entry_t *entry) {
            if (strlen(entry->message) > 10000) raise(SIGSEGV);
            return 1;
        }
        """,
    )
    report = check_plugin(library, runtimes="isolated", calls=100)
    assert list(failed(report)) == [("isolated", "huge message")], render(report)
    assert failed(report)["isolated", "huge message"].endswith("killed by SIGSEGV")


GOOD = {
    "filter": GOOD_FILTER,
    "sink": HEADER.replace("filter_planted", "sink_planted").replace('"filter"', '"sink"')
    + "SEEN = []\ndef flush(entries):\n    SEEN.extend(e['level'] for e in entries)\n"
    + "    return 0\n",
    "ai": HEADER.replace("filter_planted", "ai_planted").replace('"filter"', '"ai"')
    + "def analyze(entry):\n    yield {'progress': 0.5}\n"
    + "    yield {'summary': entry.get('message', '')[:100]}\n",
    "lang": HEADER.replace("filter_planted", "lang_planted").replace('"filter"', '"lang"')
    + "TEXTS = {('auth.login', 'en'): 'User {user} logged in'}\n"
    + "def resolve(lang_key, locale=None):\n    return TEXTS.get((lang_key, locale))\n",
}


@pytest.mark.parametrize("kind", ["sink", "ai", "lang"])
def test_a_good_plugin_of_each_type_passes_in_every_runtime(tmp_path: Path, kind: str) -> None:
    plugin = plant(tmp_path, GOOD[kind], f"{kind}_planted.py")
    report = check_plugin(plugin, calls=100)
    assert not report.failures, render(report)
    assert [figures.runtime for figures in report.figures] == ["inprocess", "isolated", "sandbox"]
    assert report.notes == []


def test_a_good_c_plugin_passes_in_process_and_isolated(tmp_path: Path) -> None:
    library = compile_c(
        tmp_path,
        "filter_good.so",
        """
        static const plugin_info_t info = {"filter_good", "1.2.0", "me", "filter", "text", "sync"};
        const plugin_info_t *plugin_info(void) { return &info; }
        int plugin_process(const log_entry_t *e) { return strcmp(e->level, "DEBUG") != 0; }
        """,
    )
    report = check_plugin(library, calls=100)
    assert not report.failures, render(report)
    assert [(f.runtime, f.engine) for f in report.figures] == [
        ("inprocess", "c"),
        ("isolated", "c-isolated"),
    ]
    assert report.info is not None and report.info["version"] == "1.2.0"


def test_the_command_shows_each_decision_and_passes_a_good_plugin(tmp_path: Path) -> None:
    plugin = plant(tmp_path, GOOD_FILTER)
    entries = tmp_path / "mine.jsonl"
    entries.write_text(
        '{"level": "DEBUG", "message": "cache warm"}\n'
        '{"level": "error", "module": "DB", "message": "deadlock"}\n'
        "\n"
        '{"level": "LOUD", "message": "?"}\n'
    )
    result = subprocess.run(
        [*LOGLOOM, "plugins", "test", str(plugin), "--entries", str(entries), "--calls", "100"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "runtime sandbox" in lines and lines[-1] == "PASSED"
    decisions = lines[lines.index("decisions (inprocess)") + 1 :]
    assert decisions[0].split()[:2] == ["1", "drop"]
    assert decisions[1].split()[:2] == ["2", "keep"]
    assert '"level":"ERROR"' in decisions[1]  # as the stage normalised it
    assert decisions[2].split()[:4] == ["4", "rejected", "at", "ingest:"]


def test_the_command_exits_1_with_the_list_of_failures(tmp_path: Path) -> None:
    plugin = plant(tmp_path, HEADER + 'def plugin_process(entry): return entry["host"] > ""\n')
    result = subprocess.run(
        [*LOGLOOM, "plugins", "test", str(plugin), "--runtime", "isolated", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    failures = [(c["where"], c["what"], c["detail"]) for c in report["checks"] if not c["ok"]]
    assert failures == [("isolated", "guaranteed fields only", "FAILED: KeyError: 'host'")]


def test_a_missing_plugin_is_a_usage_error() -> None:
    result = subprocess.run(
        [*LOGLOOM, "plugins", "test", "no/such/plugin.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("logloom: plugins test: no/such/plugin.py: not a plugin")


@pytest.mark.parametrize("kind", ["bad SemVer", "missing function", "init refuses"])
def test_a_host_names_the_same_contract_violation(tmp_path: Path, kind: str) -> None:
    _, source, (_, what), detail = next(case for case in VIOLATIONS if case[0] == kind)
    report = check_plugin(plant(tmp_path, source), runtimes="isolated")
    assert list(failed(report)) == [("contract", what)], render(report)
    assert detail in failed(report)["contract", what], render(report)


def test_a_plugin_that_hangs_fails_every_call_at_the_deadline(tmp_path: Path) -> None:
    plugin = plant(tmp_path, HEADER + "def plugin_process(entry):\n    while True: pass\n")
    config = Config()
    config.plugins.python.timeout = 20
    report = check_plugin(plugin, config, "inprocess", calls=5)
    assert {what for where, what in failed(report)} >= {"60 generated entries", "unicode"}
    assert failed(report)["inprocess", "unicode"] == "FAILED: did not answer in 20 ms"
