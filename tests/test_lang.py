"""lang_key resolution (issue 7): templates, fallback chains, the resolver and its cache, the
filter stage's new fields, language pack files, their write-through edits and the editing API."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis
from helpers import wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.requests import Request

from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.entry import Entry, decode
from pipeline.errors import ConfigError, LangEditError, LangPackError
from pipeline.health import GuardedPlugin
from pipeline.lang import LangResolver, Params, Resolved, Template, fallback_chain
from pipeline.lang_editor import routes
from pipeline.langpacks import read_pack, read_packs, write_text
from pipeline.stages.filter import FilterStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect

TEXTS = {
    ("auth.login", "en"): "User {user} logged in",
    ("auth.login", "zh"): "用户 {user} 已登录",
    ("auth.failed", "en"): "Bad password for {user} from {ip}",
    ("disk.full", "en"): "Disk full",
    ("only.zh", "zh"): "只有中文",
}


def dict_plugin(texts: dict[tuple[str, str], str], name: str = "lang_dict") -> str:
    """A lang plugin answering from ``texts``, counting the requests it gets."""
    return textwrap.dedent(
        f"""
        PLUGIN_INFO = {{"name": "{name}", "version": "1.0.0", "type": "lang"}}
        TEXTS = {texts!r}
        asked = []
        def plugin_init(config): return 0
        def resolve(lang_key, locale=None):
            asked.append((lang_key, locale))
            return TEXTS.get((lang_key, locale))
        def plugin_shutdown(): pass
        """
    )


def load_langs(tmp_path: Path, *enabled: str, **lang: Any) -> list[GuardedPlugin]:
    config = parse_config(
        {"plugins": {"enabled": list(enabled), "paths": [str(tmp_path)]}, "lang": lang}
    )
    failures: list[str] = []
    plugins = load_plugins(config, types=["lang"], failures=failures)
    assert not failures, failures
    return plugins


def resolver(tmp_path: Path, *enabled: str, **lang: Any) -> LangResolver:
    plugins = load_langs(tmp_path, *enabled, **lang)
    return LangResolver(parse_config({"lang": lang}).lang, plugins)


def run(resolve: LangResolver, *raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries as the filter stage forwards them after resolution."""
    decoded = [decode(b"1-0", {b"entry": orjson.dumps(one)}, 65536) for one in raw]
    payloads = [payload for _, payload in decoded]
    resolve.resolve([entry for entry, _ in decoded], payloads, [True] * len(raw))
    return [orjson.loads(payload) for payload in payloads]


def missing_count(locale: str) -> float:
    return REGISTRY.get_sample_value("logloom_lang_missing_total", {"locale": locale}) or 0.0


def test_templates_fill_params_and_show_the_ones_missing() -> None:
    template = Template("{user} from {ip}: {{literal}} {n}% {0}")
    assert template.fill(Params.of({"user": "alice", "n": 7, "0": "zero"})) == (
        "alice from {ip}: {literal} 7% zero"
    )
    assert (
        Template("{ok} {flag} {none} {list}").fill(
            Params.of({"ok": "x", "flag": True, "none": None, "list": [1, "a"]})
        )
        == 'x true null [1,"a"]'
    ), "non-text params are shown as JSON"
    assert Template("{user.__class__}").fill(Params.of({"user": "a"})) == "{user.__class__}"


NAMES = st.sampled_from(["user", "ip", "n", "0", "x_y"])
PARAM_VALUES = (
    st.text(max_size=8)
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(st.integers(), max_size=2)
)
TEMPLATE_TEXT = st.lists(
    st.text(alphabet='ab "\\{}\n中', max_size=4) | NAMES.map(lambda name: "{" + name + "}"),
    max_size=5,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(TEMPLATE_TEXT, min_size=1, max_size=3),
    params=st.dictionaries(NAMES, PARAM_VALUES, max_size=4),
    needs_message=st.booleans(),
)
def test_the_fast_path_writes_what_the_plain_one_does(
    texts: list[str], params: dict[str, Any], needs_message: bool
) -> None:
    locales = ["en", "zh", "zh-TW"][: len(texts)]
    templates = {locale: Template(text) for locale, text in zip(locales, texts, strict=True)}
    resolved = Resolved("k.k", templates, templates["en"], locales, "en")
    fast = orjson.loads(b'{"a":1' + resolved.fragment(params, needs_message))
    plain = resolved.added(Params.of(params), needs_message)
    assert fast == {"a": 1, **orjson.loads(orjson.dumps(plain))}


def test_fallback_chains_end_in_the_default_locale() -> None:
    assert fallback_chain("zh-Hant-TW", "en", {}) == ["zh-Hant-TW", "zh-Hant", "zh", "en"]
    assert fallback_chain("zh-TW", "en", {"zh-TW": ["zh-HK", "zh"]}) == [
        "zh-TW",
        "zh-HK",
        "zh",
        "en",
    ]
    assert fallback_chain("en", "en", {}) == ["en"]


def test_resolution_with_params_fallback_and_the_original_kept(
    tmp_path: Path, write_plugin: Callable[[str, str], Path]
) -> None:
    write_plugin("lang_dict", dict_plugin(TEXTS))
    resolve = resolver(tmp_path / "plugins", "lang_dict", locales=["en", "zh", "zh-TW", "fr"])
    login = {"lang_key": "auth.login", "params": {"user": "alice"}, "host": "web-1"}
    failed = {
        "lang_key": "auth.failed",
        "message": "producer's own text",
        "params": {"user": "bob", "ip": "10.0.0.9"},
    }
    first, second = run(resolve, login, failed)
    assert first["message_i18n"] == {
        "en": "User alice logged in",
        "zh": "用户 alice 已登录",
        "zh-TW": "用户 alice 已登录",  # zh-TW → zh
        "fr": "User alice logged in",  # fr → en
    }
    assert first["message"] == "User alice logged in", "no message: the default locale's text"
    assert {key: first[key] for key in login} == login, "the original fields are unchanged"
    assert second["message"] == "producer's own text", "a message is never overwritten"
    assert second["message_i18n"]["zh"] == "Bad password for bob from 10.0.0.9"
    assert "lang_missing" not in first and "lang_missing" not in second


def test_an_unknown_key_is_marked_counted_and_goes_on(
    tmp_path: Path,
    write_plugin: Callable[[str, str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_plugin("lang_dict", dict_plugin(TEXTS))
    resolve = resolver(tmp_path / "plugins", "lang_dict", locales=["en", "zh"])
    before = missing_count("en"), missing_count("zh")
    with caplog.at_level(logging.WARNING, "logloom.lang"):
        unknown, only_zh, unknown_again = run(
            resolve, {"lang_key": "no.such"}, {"lang_key": "only.zh"}, {"lang_key": "no.such"}
        )
    assert unknown == unknown_again
    assert unknown["lang_missing"] is True and unknown["message"] == "no.such"
    assert "message_i18n" not in unknown
    assert only_zh["message_i18n"] == {"zh": "只有中文"} and "lang_missing" not in only_zh
    assert only_zh["message"] == "only.zh", "no text in the default locale: the key"
    assert (missing_count("en") - before[0], missing_count("zh") - before[1]) == (3, 2)
    warned = [r.message for r in caplog.records if "no.such" in r.message]
    assert len(warned) == 1, "one line per unknown key, not per entry"


def test_producer_fields_of_the_same_names_are_kept(
    tmp_path: Path, write_plugin: Callable[[str, str], Path]
) -> None:
    write_plugin("lang_dict", dict_plugin(TEXTS))
    resolve = resolver(tmp_path / "plugins", "lang_dict", locales=["en", "zh"])
    (entry,) = run(resolve, {"lang_key": "auth.login", "message_i18n": {"en": "mine"}})
    assert entry["message_i18n"] == {"en": "mine"}
    assert entry["message"] == "User {user} logged in", "no params: placeholders stay"


def test_plugins_are_asked_in_order_and_the_first_answer_wins(
    tmp_path: Path, write_plugin: Callable[[str, str], Path]
) -> None:
    write_plugin("lang_first", dict_plugin({("k", "en"): "first en"}, "lang_first"))
    write_plugin(
        "lang_second",
        dict_plugin({("k", "en"): "second en", ("k", "zh"): "second zh"}, "lang_second"),
    )
    plugins = tmp_path / "plugins"
    resolve = resolver(plugins, "lang_first", "lang_second", locales=["en", "zh"])
    (entry,) = run(resolve, {"lang_key": "k"})
    assert entry["message_i18n"] == {"en": "first en", "zh": "second zh"}
    second = resolve.plugins[1].plugin.module  # type: ignore[attr-defined]
    assert second.asked == [("k", "zh")], "only what the first one did not answer"


def test_the_cache_asks_once_per_key_and_is_dropped_on_reload_and_on_a_new_generation(
    tmp_path: Path, write_plugin: Callable[[str, str], Path]
) -> None:
    source = dict_plugin(TEXTS) + "generation = [0]\ndef plugin_generation(): return generation[0]"
    path = write_plugin("lang_dict", source)
    resolve = resolver(tmp_path / "plugins", "lang_dict", locales=["en"])
    guarded = resolve.plugins[0]
    module = guarded.plugin.module  # type: ignore[attr-defined]
    login = {"lang_key": "auth.login", "params": {"user": "a"}}
    for _ in range(3):
        run(resolve, *[login] * 100)
    assert module.asked == [("auth.login", "en")], "one request for 300 entries"
    module.TEXTS[("auth.login", "en")] = "Welcome {user}"
    assert run(resolve, login)[0]["message"] == "User a logged in", "cached"
    module.generation[0] += 1
    assert run(resolve, login)[0]["message"] == "Welcome a", "the plugin said its texts changed"
    path.write_text(source.replace("User {user} logged in", "Hi {user}"))
    guarded.request_reload(lambda: load_langs(tmp_path / "plugins", "lang_dict")[0].plugin)
    assert run(resolve, login)[0]["message"] == "Hi a", "reloaded: the cache is dropped"


def test_a_failing_lang_plugin_never_costs_an_entry_and_is_asked_again(
    tmp_path: Path,
    write_plugin: Callable[[str, str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_plugin(
        "lang_flaky",
        """
        PLUGIN_INFO = {"name": "lang_flaky", "version": "1.0.0", "type": "lang"}
        calls = [0]
        def plugin_init(config): return 0
        def resolve(lang_key, locale=None):
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("pack server down")
            return 42 if lang_key == "bad" else "ok {n}"
        def plugin_shutdown(): pass
        """,
    )
    resolve = resolver(tmp_path / "plugins", "lang_flaky", locales=["en"])
    with caplog.at_level(logging.ERROR, "logloom.lang"):
        (first,) = run(resolve, {"lang_key": "k", "message": "m", "params": {"n": 1}})
        (second,) = run(resolve, {"lang_key": "k", "message": "m", "params": {"n": 2}})
        (bad,) = run(resolve, {"lang_key": "bad", "message": "m"})
    assert first["lang_missing"] is True and first["message"] == "m"
    assert second["message_i18n"] == {"en": "ok 2"}, "a failure is not cached"
    assert bad["lang_missing"] is True, "a result that is not text is no answer"
    errors = " ".join(r.message for r in caplog.records)
    assert "RuntimeError: pack server down" in errors
    assert "returned int, a lang plugin must return str" in errors


def test_plugin_process_and_a_resolve_without_locale_work_too(
    tmp_path: Path, write_plugin: Callable[[str, str], Path]
) -> None:
    write_plugin(
        "lang_process",
        """
        PLUGIN_INFO = {"name": "lang_process", "version": "1.0.0", "type": "lang"}
        def plugin_init(): return 0
        def plugin_process(entry):
            return f"{entry['locale']}: {entry['lang_key']} {{x}}"
        def plugin_shutdown(): pass
        """,
    )
    write_plugin(
        "lang_one_arg",
        """
        PLUGIN_INFO = {"name": "lang_one_arg", "version": "1.0.0", "type": "lang"}
        def plugin_init(): return 0
        def resolve(lang_key): return "same in every locale"
        def plugin_shutdown(): pass
        """,
    )
    plugins = tmp_path / "plugins"
    (entry,) = run(resolver(plugins, "lang_process", locales=["en", "de"]), {"lang_key": "a.b"})
    assert entry["message_i18n"] == {"en": "en: a.b {x}", "de": "de: a.b {x}"}
    (entry,) = run(resolver(plugins, "lang_one_arg", locales=["en", "de"]), {"lang_key": "a.b"})
    assert entry["message_i18n"] == {"en": "same in every locale", "de": "same in every locale"}


def test_the_filter_stage_resolves_survivors_and_never_dead_letters_a_key(
    tmp_path: Path, write_plugin: Callable[[str, str], Path], client: redis.Redis, redis_url: str
) -> None:
    write_plugin("lang_dict", dict_plugin(TEXTS))
    config = parse_config(
        {
            "plugins": {
                "enabled": ["log_filter_severity", "lang_dict"],
                "paths": [str(tmp_path / "plugins")],
            },
            "lang": {"locales": ["en", "zh"]},
            "stages": {"block_ms": 10},
        }
    )
    plugins = load_plugins(config, types=["filter", "lang"])
    filters = [p for p in plugins if p.info.type == "filter"]
    langs = [p for p in plugins if p.info.type == "lang"]
    stage = FilterStage(config, filters, langs)
    loop = StageLoop(connect(redis_url), stage, config.stages, 500)
    loop.ensure_groups()
    sent = [
        {"level": "ERROR", "lang_key": "auth.login", "params": {"user": "u1"}},
        {"level": "DEBUG", "lang_key": "auth.login", "params": {"user": "dropped"}},
        {"level": "WARN", "lang_key": "never.heard.of"},
        {"level": "INFO", "message": "plain"},
    ]
    for one in sent:
        client.xadd(config.keys.ingest, {"entry": orjson.dumps(one)})
    loop.step()  # reads the batch
    loop.finish()  # handles it and sends its writes
    out = [orjson.loads(f[b"entry"]) for _, f in client.xrange(config.keys.filtered)]
    assert [one.get("message") for one in out] == ["User u1 logged in", "never.heard.of", "plain"]
    assert out[0]["message_i18n"] == {"en": "User u1 logged in", "zh": "用户 u1 已登录"}
    assert out[1]["lang_missing"] is True
    assert "message_i18n" not in out[2] and "lang_missing" not in out[2]
    assert client.xlen(config.keys.dlq("filter")) == 0
    assert client.xlen(config.keys.dlq("ingest")) == 0
    pending = client.xpending(config.keys.ingest, stage.group)["pending"]
    assert pending == 0
    for plugin in plugins:
        plugin.shutdown()


# --- language pack files ------------------------------------------------------------------


EN_PACK = """\
# English texts
auth:
  login: User {user} logged in   # keep this comment
  failed: "Bad password for {user} from {ip}"
disk.full: Disk {mount} is {pct}% full
"""


def packs(tmp_path: Path) -> Path:
    directory = tmp_path / "lang"
    directory.mkdir()
    (directory / "en.yaml").write_text(EN_PACK)
    (directory / "zh.yaml").write_text("auth:\n  login: 用户 {user} 已登录\n")
    return directory


def test_packs_read_nested_and_dotted_keys(tmp_path: Path) -> None:
    assert read_packs(packs(tmp_path)) == {
        "en": {
            "auth.login": "User {user} logged in",
            "auth.failed": "Bad password for {user} from {ip}",
            "disk.full": "Disk {mount} is {pct}% full",
        },
        "zh": {"auth.login": "用户 {user} 已登录"},
    }


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("auth:\n  login: ok\n  failed: : x\n", ":3: mapping values are not allowed here"),
        ("auth:\n  login: [a, b]\n", ":2: auth.login: a text must be a string, not a list"),
        ("auth:\n  login: a\n  login: b\n", ":3: auth.login: defined twice (first on line 2)"),
        ("a:\n  b:\n", ":2: a.b: no text"),
        ("- just\n- a list\n", ":1: a language pack maps keys to texts"),
        ("login: 'unclosed\n", ":2: found unexpected end of stream"),
        ("'a b': text\n", ":1: 'a b' is not a key (letters, digits, _ - and dots)"),
    ],
)
def test_a_malformed_pack_is_reported_with_its_file_and_line(
    tmp_path: Path, source: str, error: str
) -> None:
    path = tmp_path / "de.yaml"
    path.write_text(source)
    with pytest.raises(LangPackError) as raised:
        read_pack(path)
    assert str(raised.value) == f"{path}{error}"


def test_write_through_edits_in_place_and_keeps_comments(tmp_path: Path) -> None:
    directory = packs(tmp_path)
    edit = write_text(directory, "en", "auth.login", "{user} signed in", "en")
    assert edit.previous == "User {user} logged in" and not edit.rewritten
    assert edit.mismatched == [], "zh still has {user}"
    assert (directory / "en.yaml").read_text() == EN_PACK.replace(
        "User {user} logged in", '"{user} signed in"'
    )
    added = write_text(directory, "zh", "auth.failed", "来自 {ip} 的 {user} 密码错误", "en")
    assert added.previous is None
    assert read_pack(directory / "zh.yaml") == {
        "auth.login": "用户 {user} 已登录",
        "auth.failed": "来自 {ip} 的 {user} 密码错误",
    }
    tricky = 'quotes " and \\ and a\nnew line {user} {ip}'
    write_text(directory, "zh", "auth.failed", tricky, "en")
    assert read_pack(directory / "zh.yaml")["auth.failed"] == tricky
    renamed = write_text(directory, "en", "auth.login", "{name} signed in", "en")
    assert renamed.mismatched == ["zh"], "the default locale changed its placeholders"
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "en.yaml", "zh.yaml"]


@pytest.mark.parametrize(
    ("locale", "key", "text", "error"),
    [
        ("zh", "auth.login", "用户 {usr} 已登录", "placeholders {usr} do not match {user}"),
        ("zh", "auth.login", "用户已登录", "placeholders (none) do not match {user}"),
        ("zh", "auth.new", "新", "auth.new has no text in the default locale en"),
        ("../etc", "auth.login", "x", "'../etc' is not a locale"),
        ("zh", "auth login", "x", "'auth login' is not a key"),
        ("zh", "auth.login", "", "the text must be a non-empty string"),
        ("zh", "auth.login", 5, "the text must be a non-empty string"),
        ("en", "auth.login", "x" * 20000, "over the 16384-byte limit"),
        ("fr", "auth.login", "{user}", "no pack for fr and it is not a configured locale"),
    ],
)
def test_an_edit_that_does_not_fit_is_refused_and_changes_nothing(
    tmp_path: Path, locale: str, key: str, text: Any, error: str
) -> None:
    directory = packs(tmp_path)
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    with pytest.raises(LangEditError) as raised:
        write_text(directory, locale, key, text, "en", locales={"en": 1, "zh": 1})
    assert error in str(raised.value)
    after = {path.name: path.read_bytes() for path in directory.iterdir() if path.name != ".lock"}
    assert after == before


def test_a_malformed_pack_is_not_edited(tmp_path: Path) -> None:
    directory = packs(tmp_path)
    (directory / "zh.yaml").write_text("auth:\n  login: [\n")
    with pytest.raises(LangPackError, match=r"zh\.yaml:3"):
        write_text(directory, "zh", "auth.login", "用户 {user}", "en")
    assert (directory / "zh.yaml").read_text() == "auth:\n  login: [\n"


@pytest.mark.parametrize(
    ("lang", "message"),
    [
        ({"locales": ["en", "zh_TW"]}, "lang.locales[1]: 'zh_TW' is not a locale"),
        ({"default": "../x"}, "lang.default: '../x' is not a locale"),
        ({"fallback": {"zh-TW": ["zh", "?"]}}, "lang.fallback.zh-TW[1]: '?' is not a locale"),
        ({"edit_token": "short"}, "lang.edit_token: use at least 16 characters"),
        ({"locale": ["en"]}, "lang.locale: unknown key"),
    ],
)
def test_lang_config_errors_name_the_key(lang: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"lang": lang}, "f.yaml")
    assert f"f.yaml: {message}" in str(raised.value)


# --- the bundled lang_hot_reload ----------------------------------------------------------


def hot_reload(directory: Path, **settings: Any) -> GuardedPlugin:
    config = parse_config(
        {
            "plugins": {
                "enabled": ["lang_hot_reload"],
                "config": {"lang_hot_reload": {"debounce_ms": 50, **settings}},
            },
            "lang": {"packs_dir": str(directory), "locales": ["en", "zh"]},
        }
    )
    failures: list[str] = []
    (plugin,) = load_plugins(config, types=["lang"], failures=failures) or [None]
    assert not failures, failures
    assert plugin is not None
    return plugin


def ask(plugin: GuardedPlugin, key: str, locale: str) -> Any:
    (answer,) = plugin.call_batch([Entry({"lang_key": key, "locale": locale})])
    return answer


def test_lang_hot_reload_picks_up_edits_and_keeps_the_last_good_pack(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = packs(tmp_path)
    plugin = hot_reload(directory)
    generation = plugin.plugin.generation  # type: ignore[attr-defined]
    try:
        assert ask(plugin, "auth.login", "zh") == "用户 {user} 已登录"
        assert ask(plugin, "auth.login", "fr") is None and ask(plugin, "nope", "en") is None
        started = generation()
        (directory / "zh.yaml").write_text("auth:\n  login: 欢迎 {user}\n")
        wait_for(lambda: ask(plugin, "auth.login", "zh") == "欢迎 {user}", 5, "the edit")
        assert generation() > started
        with caplog.at_level(logging.ERROR, "logloom.plugins"):
            (directory / "zh.yaml").write_text("auth:\n  login: 坏 {user}\n  oops: [\n")
            wait_for(lambda: "zh.yaml:4" in caplog.text, 5, "the error with file and line")
        assert f"Language pack {directory / 'zh.yaml'}:4: " in caplog.text
        assert "the previous zh texts stay in use" in caplog.text
        assert ask(plugin, "auth.login", "zh") == "欢迎 {user}", "the last good pack stays"
        (directory / "de.yaml").write_text("auth:\n  login: Hallo {user}\n")
        wait_for(lambda: ask(plugin, "auth.login", "de") == "Hallo {user}", 5, "a new pack")
        (directory / "de.yaml").unlink()
        wait_for(lambda: ask(plugin, "auth.login", "de") is None, 5, "a removed pack")
        assert ask(plugin, "auth.login", "zh") == "欢迎 {user}"
    finally:
        plugin.shutdown()


def test_lang_hot_reload_refuses_to_start_on_a_malformed_pack(tmp_path: Path) -> None:
    directory = packs(tmp_path)
    (directory / "zh.yaml").write_text("auth:\n  login: [\n")
    config = parse_config(
        {"plugins": {"enabled": ["lang_hot_reload"]}, "lang": {"packs_dir": str(directory)}}
    )
    failures: list[str] = []
    assert load_plugins(config, failures=failures) == []
    (failure,) = failures
    assert failure.startswith(
        "Failed to load plugin 'lang_hot_reload.py': plugin_init() raised LangPackError: "
        f"{directory / 'zh.yaml'}:3: "
    )
    missing = parse_config(
        {"plugins": {"enabled": ["lang_hot_reload"]}, "lang": {"packs_dir": str(tmp_path / "no")}}
    )
    failures = []
    assert load_plugins(missing, failures=failures) == []
    assert "no such directory (lang.packs_dir)" in failures[0]


def test_lang_hot_reload_answers_only_a_cache_miss(tmp_path: Path) -> None:
    """The hot path: 10,000 entries of 20 keys cost 20 × 2 plugin lookups."""
    directory = packs(tmp_path)
    (directory / "en.yaml").write_text(
        "".join(f'k{n}: "text {n} for {{user}}"\n' for n in range(20))
    )
    plugin = hot_reload(directory, watch=False)
    resolve = LangResolver(parse_config({"lang": {"locales": ["en", "zh"]}}).lang, [plugin])
    entries = [{"lang_key": f"k{n % 20}", "params": {"user": n}} for n in range(10_000)]
    started = time.perf_counter()
    out = run(resolve, *entries)
    elapsed = time.perf_counter() - started
    assert plugin.entries == 40 and plugin.calls == 1
    assert out[123]["message_i18n"] == {"en": "text 3 for 123", "zh": "text 3 for 123"}
    assert elapsed < 2.0
    plugin.shutdown()


# --- the editing API's answers, called in process -------------------------------------------


def call(route: Any, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    """One request to a Starlette route, without a server."""
    match = route.path_regex.match(path)
    assert match is not None, path
    raw = b"" if body is None else orjson.dumps(body)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "path_params": match.groupdict(),
        "query_string": b"",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    response = asyncio.run(route.endpoint(Request(scope, receive)))
    return response.status_code, orjson.loads(response.body)


def editor_routes(tmp_path: Path, token: str | None) -> dict[str, Any]:
    directory = packs(tmp_path)
    lang = {"packs_dir": str(directory), "locales": ["en", "zh-TW"], "edit_token": token}
    dashboard = SimpleNamespace(config=parse_config({"lang": lang}))
    return {route.path: route for route in routes(dashboard)}


def test_the_editing_api_answers(tmp_path: Path) -> None:
    token = "x" * 16
    found = editor_routes(tmp_path, token)
    index, text = found["/api/lang"], found["/api/lang/{locale}/{key}"]
    auth = {"Authorization": f"Bearer {token}"}
    status, listing = call(index, "GET", "/api/lang", **auth)
    assert status == 200 and listing["editable"] == ["en", "zh-TW", "zh"]
    assert listing["packs"]["zh"]["keys"] == ["auth.login"]
    assert call(text, "GET", "/api/lang/zh/auth.failed", **auth)[0] == 404
    assert call(text, "GET", "/api/lang/zh/auth.login")[0] == 401
    json_auth = {**auth, "Content-Type": "application/json"}
    status, answer = call(text, "PUT", "/api/lang/zh/auth.login", [1], **json_auth)
    assert (status, answer["error"]) == (400, 'body: expected {"text": "..."}')
    status, answer = call(
        text, "PUT", "/api/lang/zh-TW/auth.login", {"text": "使用者 {user}"}, **json_auth
    )
    assert status == 200 and answer["previous"] is None, "a pack for a configured locale is made"
    assert read_pack(Path(answer["file"])) == {"auth.login": "使用者 {user}"}
    (tmp_path / "lang" / "zh.yaml").write_text("auth: [\n")
    status, answer = call(text, "PUT", "/api/lang/zh/auth.login", {"text": "{user}"}, **json_auth)
    assert status == 409 and "zh.yaml:2" in answer["error"]
    (tmp_path / "off").mkdir()
    off = editor_routes(tmp_path / "off", None)["/api/lang"]
    assert call(off, "GET", "/api/lang", **auth)[0] == 404
