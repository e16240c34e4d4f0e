"""lang plugins in every runtime (issue 7 part 4): in process, in a plugin host over the §5
protocol, as a §6 service, and in C through ``plugin_resolve`` — each resolving the same entries
to the same texts through the worker's resolver, fallbacks included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from plugin_kit import LOGLOOM, ROOT, compile_c, start_service, stop

from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.entry import Entry, decode
from pipeline.health import GuardedPlugin
from pipeline.lang import LangResolver
from pipeline.plugin import Failure

pytestmark = pytest.mark.plugins

LANG = {"locales": ["en", "zh", "zh-TW"], "default": "en"}
ENTRIES = [
    {"lang_key": "auth.login", "params": {"user": "alice"}},
    {"lang_key": "auth.login", "message": "kept", "params": {"user": "bob"}},
    {"lang_key": "no.such.key"},
]
EXPECTED = [
    {
        "message_i18n": {
            "en": "User alice logged in",
            "zh": "用户 alice 已登录",
            "zh-TW": "用户 alice 已登录",
        },
        "message": "User alice logged in",
    },
    {
        "message_i18n": {
            "en": "User bob logged in",
            "zh": "用户 bob 已登录",
            "zh-TW": "用户 bob 已登录",
        },
        "message": "kept",
    },
    {"lang_missing": True, "message": "no.such.key"},
]
NEW_FIELDS = ("message_i18n", "message", "lang_missing")

C_LANG_TABLE = """\
static const plugin_info_t info = {"lang_table", "1.0.0", "test", "lang", "text", "sync"};
const plugin_info_t *plugin_info(void) { return &info; }
static const char *table[][3] = {
    {"auth.login", "en", "User {user} logged in"},
    {"auth.login", "zh", "用户 {user} 已登录"},
    {"bad.text", "en", "\\xff\\xfe"},
};
const char *plugin_resolve(const char *key, const char *locale) {
    if (locale == NULL) locale = "en";
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i][0], key) == 0 && strcmp(table[i][1], locale) == 0) return table[i][2];
    return NULL;
}
"""

LANG_SERVICE = '''\
"""A lang plugin as a service: JSON-RPC 2.0 lines on a Unix socket (CONTRACT §6)."""
import json, socketserver, sys

TEXTS = {"auth.login": {"en": "User {user} logged in", "zh": "用户 {user} 已登录"}}
INFO = {"name": "lang_svc", "version": "1.0.0", "type": "lang"}
seen = []

def answer(method, params):
    if method == "info":
        return INFO
    if method == "process_batch":
        seen.append(params["entries"])
        results = [TEXTS.get(e.get("lang_key"), {}).get(e.get("locale")) for e in params["entries"]]
        return {"status": 0, "results": results, "errors": {}}
    if method == "init":
        seen.append(params["config"])
    return {"status": 0}

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            request = json.loads(line)
            result = answer(request["method"], request.get("params") or {})
            reply = {"jsonrpc": "2.0", "id": request["id"], "result": result}
            if request["method"] in ("init", "process_batch"):
                with open(sys.argv[2], "w") as out:
                    json.dump(seen, out)
            self.wfile.write(json.dumps(reply, ensure_ascii=False).encode() + b"\\n")

server = socketserver.ThreadingUnixStreamServer(sys.argv[1], Handler)
print(f"listening on unix:{sys.argv[1]}", flush=True)
server.serve_forever()
'''


def write_packs(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "en.yaml").write_text("auth:\n  login: User {user} logged in\n")
    (directory / "zh.yaml").write_text("auth:\n  login: 用户 {user} 已登录\n")
    return directory


def load(tmp_path: Path, name: str, **plugins: Any) -> GuardedPlugin:
    config = parse_config(
        {
            "plugins": {"enabled": [name], "paths": [str(tmp_path / "plugins")], **plugins},
            "lang": {**LANG, "packs_dir": str(tmp_path / "lang")},
        }
    )
    failures: list[str] = []
    loaded = load_plugins(config, types=["lang"], failures=failures)
    assert not failures, failures
    (plugin,) = loaded
    return plugin


def resolved(plugin: GuardedPlugin) -> list[dict[str, Any]]:
    resolver = LangResolver(parse_config({"lang": LANG}).lang, [plugin])
    decoded = [decode(b"1-0", {b"entry": orjson.dumps(one)}, 65536) for one in ENTRIES]
    payloads = [payload for _, payload in decoded]
    resolver.resolve([entry for entry, _ in decoded], payloads, [True] * len(payloads))
    out = [orjson.loads(payload) for payload in payloads]
    return [{key: one[key] for key in NEW_FIELDS if key in one} for one in out]


@pytest.mark.parametrize("mode", ["inprocess", "isolated"])
def test_lang_hot_reload_in_process_and_in_a_plugin_host(tmp_path: Path, mode: str) -> None:
    write_packs(tmp_path / "lang")
    plugin = load(tmp_path, "lang_hot_reload", settings={"lang_hot_reload": {"mode": mode}})
    try:
        assert plugin.runtime == ("python" if mode == "inprocess" else "python-subprocess")
        assert resolved(plugin) == EXPECTED
    finally:
        plugin.shutdown()


def test_a_sandboxed_lang_plugin_finds_packs_given_relative_to_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandboxed host runs in its own work directory: lang.packs_dir, relative to the
    worker's, must reach the plugin as the same directory."""
    write_packs(tmp_path / "lang")
    monkeypatch.chdir(tmp_path)
    config = parse_config(
        {
            "plugins": {
                "enabled": ["lang_hot_reload"],
                "settings": {"lang_hot_reload": {"sandbox": True}},
                "python": {"work_dir": str(tmp_path / "work")},
            },
            "lang": {**LANG, "packs_dir": "lang"},
        }
    )
    failures: list[str] = []
    (plugin,) = load_plugins(config, types=["lang"], failures=failures)
    try:
        assert not failures, failures
        assert resolved(plugin) == EXPECTED
    finally:
        plugin.shutdown()


def test_plugins_run_answers_lang_requests_over_the_protocol(tmp_path: Path) -> None:
    packs = write_packs(tmp_path / "lang")
    requests = [
        {"op": "info"},
        {"op": "init", "config": {"packs_dir": str(packs), "watch": False}},
        {"entry": {"lang_key": "auth.login", "locale": "zh"}},
        {"batch": [{"lang_key": "auth.login", "locale": "en"}, {"lang_key": "x", "locale": "en"}]},
        {"op": "shutdown"},
    ]
    result = subprocess.run(
        [*LOGLOOM, "plugins", "run", str(ROOT / "plugins" / "python" / "lang_hot_reload.py")],
        input="".join(orjson.dumps(one).decode() + "\n" for one in requests),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    answers = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert answers[0]["result"]["type"] == "lang"
    assert answers[1:] == [
        {"status": 0},
        {"status": 0, "result": "用户 {user} 已登录"},
        {"status": 0, "results": ["User {user} logged in", None], "errors": {}},
        {"status": 0},
    ]


@pytest.mark.parametrize("mode", ["inprocess", "isolated"])
def test_a_c_lang_plugin_through_plugin_resolve(tmp_path: Path, mode: str) -> None:
    compile_c(tmp_path / "plugins", "lang_table.so", C_LANG_TABLE)
    plugin = load(tmp_path, "lang_table", settings={"lang_table": {"mode": mode}})
    try:
        assert plugin.runtime == ("c" if mode == "inprocess" else "c-isolated")
        assert resolved(plugin) == EXPECTED
        (bad,) = plugin.call_batch([Entry({"lang_key": "bad.text", "locale": "en"})])
        assert isinstance(bad, Failure)
        assert "plugin_resolve() returned text that is not UTF-8" in bad.error
    finally:
        plugin.shutdown()


def test_a_c_lang_library_needs_plugin_resolve_and_no_plugin_process(tmp_path: Path) -> None:
    compile_c(
        tmp_path / "plugins",
        "lang_nothing.so",
        "int plugin_process(const log_entry_t *e) { (void)e; return 0; }\n",
    )
    compile_c(tmp_path / "plugins", "lang_table.so", C_LANG_TABLE)
    config = parse_config(
        {
            "plugins": {
                "enabled": ["lang_nothing", "lang_table"],
                "paths": [str(tmp_path / "plugins")],
            }
        }
    )
    failures: list[str] = []
    loaded = load_plugins(config, failures=failures)
    assert failures == ["Failed to load plugin 'lang_nothing.so': missing plugin_resolve()"]
    assert [plugin.name for plugin in loaded] == ["lang_table"], "loads without plugin_process"


def test_a_lang_service_over_json_rpc(tmp_path: Path) -> None:
    script = tmp_path / "lang_service.py"
    script.write_text(textwrap.dedent(LANG_SERVICE))
    sock, seen = tmp_path / "lang.sock", tmp_path / "seen.json"
    service = start_service([sys.executable, str(script), str(sock), str(seen)])
    try:
        plugin = load(
            tmp_path,
            "lang_svc",
            services={"lang_svc": {"address": f"unix://{sock}", "type": "lang"}},
        )
        assert plugin.runtime == "service"
        assert resolved(plugin) == EXPECTED
        plugin.shutdown()
    finally:
        stop(service)
    config, batch = orjson.loads(seen.read_bytes())
    assert config["locales"] == LANG["locales"] and config["default_locale"] == "en"
    assert config["packs_dir"] == str(tmp_path / "lang"), "lang plugins get lang.* in config"
    assert {(one["lang_key"], one["locale"]) for one in batch} == {
        (key, locale) for key in ("auth.login", "no.such.key") for locale in ("en", "zh", "zh-TW")
    }, "one process_batch with every (key, locale) the batch needed"
