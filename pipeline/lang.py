"""Resolution of ``lang_key`` into localized messages, for the filter stage (design §3.1, §6.3).

An entry ``{"lang_key": "auth.login", "params": {"user": "alice"}}`` leaves the filter stage
with new fields beside the original ones, which are never overwritten (CONTRACT §1):

``message_i18n``
    ``{"en": "User alice logged in", "zh": "用户 alice 已登录"}``: one text per locale of
    ``lang.locales`` that resolved, each through its fallback chain (``zh-TW → zh → en``).
``message``
    only when the entry has none: the text in ``lang.default`` (else the ``lang_key`` itself,
    as gettext shows an untranslated msgid).
``lang_missing``
    ``true`` when no lang plugin knows the key in any configured locale; such an entry goes on
    (never to the DLQ) and counts in ``logloom_lang_missing_total``.

Lang plugins are asked for templates, not for entries: a request is ``{"lang_key": ...,
"locale": ...}`` and the answer a text with ``{name}`` placeholders, or None for a key the
plugin does not know in exactly that locale (Logloom walks the fallback chain). Plugins are
asked in order; the first answer wins. Answers are cached per worker by key, so a key costs
plugin calls once (all the keys new to a batch in one call per plugin); the cache is dropped
when a lang plugin is reloaded, restarted, enabled or disabled, or says its texts changed
(``plugin_generation()``). A failed call is counted, logged once per cause and not cached; the
entries go on with what the other plugins gave.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from pipeline.config import LangConfig
from pipeline.entry import Entry
from pipeline.health import GuardedPlugin
from pipeline.langpacks import PLACEHOLDER
from pipeline.metrics import LANG_MISSING, PLUGIN_ERRORS
from pipeline.plugin import Failure

log = logging.getLogger("logloom.lang")

CACHE_MAX_KEYS = 100_000
"""A worker's cache is emptied when it holds more keys than this (a producer inventing keys)."""
WARNED_MAX = 1000
NEW_FIELDS = ("message_i18n", "lang_missing")


def fallback_chain(locale: str, default: str, fallback: Mapping[str, Sequence[str]]) -> list[str]:
    """Where to look for ``locale``'s text, in order: the locale; then ``lang.fallback.<locale>``
    if set, else its parent tags (``zh-Hant-TW → zh-Hant → zh``); the default locale last."""
    chain = [locale]
    if locale in fallback:
        chain += fallback[locale]
    else:
        parts = locale.split("-")
        chain += ["-".join(parts[:size]) for size in range(len(parts) - 1, 0, -1)]
    chain.append(default)
    return list(dict.fromkeys(chain))


def plugin_defaults(lang: LangConfig) -> dict[str, Any]:
    """What every lang plugin finds in its config unless its own sets it. The pack directory
    is made absolute here, from the worker's directory: a sandboxed host runs in its own."""
    return {
        "packs_dir": str(Path(lang.packs_dir).resolve()),
        "locales": list(lang.locales),
        "default_locale": lang.default,
    }


def _text(value: Any) -> str:
    """A param as it is shown in a text: text as it is, anything else as JSON."""
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)  # its JSON, and any size (orjson stops at 64 bits)
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:  # not from a decoded entry: a Python caller's own object
        return str(value)


class Params(dict[str, str]):
    """An entry's params as text, for filling templates: a missing one shows as ``{name}``."""

    __slots__ = ()

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Params:
        return cls({str(name): _text(value) for name, value in params.items()})

    def __missing__(self, name: str) -> str:
        return "{" + name + "}"


class Template:
    """A text with ``{name}`` placeholders, parsed once; filling it is one ``format_map``."""

    __slots__ = ("form", "literals", "names", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        literals: list[str] = []
        names: list[str] = []
        piece: list[str] = []
        position = 0
        for match in PLACEHOLDER.finditer(text):
            piece.append(text[position : match.start()])
            token = match.group(0)
            if match.group(1) is None:
                piece.append(token[0])  # {{ or }}
            else:
                literals.append("".join(piece))
                names.append(match.group(1))
                piece = []
            position = match.end()
        piece.append(text[position:])
        literals.append("".join(piece))
        self.literals = literals
        self.names = names
        # str.format reads an all-digit name as a position: those templates fill by hand.
        self.form = (
            None
            if any(name[0].isdigit() for name in names)
            else "".join(
                literal.replace("{", "{{").replace("}", "}}") + ("{" + name + "}")
                for literal, name in zip(literals, names, strict=False)
            )
            + literals[-1].replace("{", "{{").replace("}", "}}")
        )

    def fill(self, params: Params) -> str:
        """The text with each placeholder's param; one without a param stays ``{name}``."""
        if not self.names:
            return self.literals[0]
        if self.form is not None:
            return self.form.format_map(params)
        parts = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            parts += (params[name], literal)
        return "".join(parts)


class Resolved:
    """What one key resolved to: a template per configured locale that has one and the default
    locale's for ``message``; and, ready made, the JSON they add to an entry without params."""

    __slots__ = (
        "absent",
        "default",
        "fixed",
        "fixed_with_message",
        "forms",
        "key",
        "message_locale",
        "missing",
        "static",
        "templates",
    )

    def __init__(
        self,
        key: str,
        templates: dict[str, Template],
        default: Template | None,
        locales: Sequence[str],
        default_locale: str,
    ) -> None:
        self.key = key
        self.templates = templates
        self.default = default
        self.missing = not templates
        self.absent = tuple(locale for locale in locales if locale not in templates)
        # The message is the default locale's text: made once, when it is among the locales.
        self.message_locale = default_locale if default_locale in templates else None
        used = [*templates.values(), *([default] if default else [])]
        # No placeholders: every entry gets the ready-made JSON, whatever its params.
        self.static = not any(one.names for one in used)
        # The fast path's format strings; None if a template must be filled by hand.
        forms = [(locale, one.form) for locale, one in templates.items()]
        self.forms: list[tuple[str, str]] | None = (
            [(locale, form) for locale, form in forms if form is not None]
            if all(one.form is not None for one in used)
            else None
        )
        self.fixed = self._json(self.added(Params(), True))
        self.fixed_with_message = self._json(self.added(Params(), False))

    def fragment(self, params: Any, needs_message: bool) -> bytes:
        """The JSON this key adds to an entry with ``params`` (and no message, if
        ``needs_message``): ``,"message_i18n":{...}}``, to replace the entry's closing brace.
        The hot path: one ``format_map`` per text and one ``orjson.dumps``."""
        if type(params) is not dict or not params or self.static:
            return self.fixed if needs_message else self.fixed_with_message
        forms = self.forms
        view: Mapping[str, Any] = params  # text and integers format as they are: no copy
        for value in params.values():
            kind = type(value)
            if kind is not str and kind is not int:
                view = Params.of(params)
                break
        if forms is None:
            return self._json(self.added(Params.of(params), needs_message))
        try:
            texts = {locale: form.format_map(view) for locale, form in forms}
        except KeyError:  # a placeholder without its param: shown as {name}
            view = Params.of(params)
            texts = {locale: form.format_map(view) for locale, form in forms}
        if needs_message:
            if self.message_locale is not None:
                message = texts[self.message_locale]
            else:
                message = self.default.fill(Params.of(params)) if self.default else self.key
            return self._json({"message_i18n": texts, "message": message})
        return b',"message_i18n":' + orjson.dumps(texts) + b"}"

    def added(self, params: Params, needs_message: bool) -> dict[str, Any]:
        """The fields this key adds to an entry, as a dict."""
        if self.missing:
            added: dict[str, Any] = {"lang_missing": True}
            if needs_message:
                added["message"] = self.key
            return added
        added = {"message_i18n": {loc: one.fill(params) for loc, one in self.templates.items()}}
        if needs_message:
            added["message"] = self.default.fill(params) if self.default else self.key
        return added

    @staticmethod
    def _json(added: dict[str, Any]) -> bytes:
        """``,"field":value,...}``: what replaces the closing brace of an entry's JSON."""
        return b"," + orjson.dumps(added)[1:]


class LangResolver:
    """A filter worker's resolution of ``lang_key``s through its lang plugins, with its cache."""

    def __init__(self, lang: LangConfig, plugins: Sequence[GuardedPlugin]) -> None:
        self.plugins = list(plugins)
        self.locales = list(dict.fromkeys(lang.locales or [lang.default]))
        self.default = lang.default
        self.chains = {
            locale: fallback_chain(locale, lang.default, lang.fallback)
            for locale in [*self.locales, lang.default]
        }
        self.asked = list(dict.fromkeys(step for chain in self.chains.values() for step in chain))
        self.cache: dict[str, Resolved] = {}
        self._state: list[tuple[Any, ...]] = []
        self._warned: set[tuple[str, str]] = set()

    def resolve(
        self, entries: Sequence[Entry], payloads: list[bytes], keep: Sequence[bool]
    ) -> None:
        """Add the resolved fields to the JSON of every kept entry with a ``lang_key``: each
        ``payloads[i]`` becomes its entry's JSON with the new fields appended."""
        cache = self.cache
        get = cache.get
        wanted: list[tuple[int, Entry, Resolved | None]] = []
        for index, (entry, kept) in enumerate(zip(entries, keep, strict=True)):
            key = entry.get("lang_key") if kept else None
            if key is not None:
                wanted.append((index, entry, get(key)))
        if not wanted:
            return
        if self._check_state():  # the cache was dropped: nothing found above still holds
            wanted = [(index, entry, None) for index, entry, _ in wanted]
        found: dict[str, Resolved] = {}
        misses = {entry["lang_key"] for _, entry, resolved in wanted if resolved is None}
        if misses:
            found = self._lookup(sorted(misses))
        missing: Counter[str] = Counter()
        for index, entry, cached in wanted:
            resolved = cached or found[entry["lang_key"]]
            if "message_i18n" in entry or "lang_missing" in entry:
                payloads[index] = self._keeping_theirs(entry, payloads[index], resolved)
            else:
                payload = payloads[index]
                if payload[-1:] != b"}":  # whitespace after the object
                    payload = payload.rstrip()
                fragment = resolved.fragment(entry.get("params"), "message" not in entry)
                payloads[index] = payload[:-1] + fragment
            if resolved.absent:
                missing.update(resolved.absent)
        for locale, count in missing.items():
            LANG_MISSING.labels(locale).inc(count)

    @staticmethod
    def _keeping_theirs(entry: Entry, payload: bytes, resolved: Resolved) -> bytes:
        """The new fields but those the producer sent itself, which are kept as they are."""
        params = entry.get("params")
        view = Params.of(params) if isinstance(params, dict) else Params()
        added = resolved.added(view, "message" not in entry)
        for name in NEW_FIELDS:
            if name in entry:
                added.pop(name, None)
        if not added:
            return payload
        return payload.rstrip()[:-1] + Resolved._json(added)

    def _check_state(self) -> bool:
        """Carry out requested reloads, and drop the cache if a lang plugin changed since the
        last batch (or it grew too big); whether it was dropped."""
        for plugin in self.plugins:
            plugin.apply_pending()
        state = [self._plugin_state(plugin) for plugin in self.plugins]
        if state == self._state and len(self.cache) <= CACHE_MAX_KEYS:
            return False
        if self._state and state != self._state:
            log.debug("Lang: plugins changed; %d cached keys dropped", len(self.cache))
        self.cache.clear()
        self._state = state
        return True

    @staticmethod
    def _plugin_state(guarded: GuardedPlugin) -> tuple[Any, ...]:
        plugin = guarded.plugin
        generation = getattr(plugin, "generation", None)
        if callable(generation):
            try:
                generation = generation()
            except Exception as exc:  # a plugin's bug; its texts are taken as unchanged
                log.warning("Plugin '%s': plugin_generation() raised %s", guarded.name, exc)
                generation = "failed"
        return (id(plugin), guarded.reloads, guarded.restarts, guarded.enabled, generation)

    def _lookup(self, keys: list[str]) -> dict[str, Resolved]:
        """Resolve keys the cache lacks: every (key, locale) of every chain, plugin by plugin,
        each plugin asked only what the ones before it did not answer."""
        pending = [(key, locale) for key in keys for locale in self.asked]
        texts: dict[tuple[str, str], str] = {}
        failed: set[str] = set()
        for plugin in self.plugins:
            if not pending or not plugin.enabled:
                continue
            requests = [Entry({"lang_key": key, "locale": locale}) for key, locale in pending]
            unanswered = []
            failures: Counter[str] = Counter()
            for pair, result in zip(pending, plugin.call_batch(requests), strict=True):
                if type(result) is str:
                    texts[pair] = result
                    continue
                unanswered.append(pair)
                if result is not None:  # a Failure, or what on_failure: pass made of one
                    failed.add(pair[0])
                    failures[result.error if isinstance(result, Failure) else "failed"] += 1
            if failures:
                self._report(plugin, failures)
            pending = unanswered
        resolved = {key: self._build(key, texts) for key in keys}
        for key, one in resolved.items():
            if key not in failed:  # a failed call is asked again next batch
                self.cache[key] = one
            if one.missing and len(self._warned) < WARNED_MAX and ("", key) not in self._warned:
                self._warned.add(("", key))
                log.warning(
                    "Lang: no lang plugin knows '%s' in %s; its entries go on marked lang_missing",
                    key,
                    ", ".join(self.locales),
                )
        return resolved

    def _build(self, key: str, texts: Mapping[tuple[str, str], str]) -> Resolved:
        chosen: dict[str, Template] = {}
        for locale, chain in self.chains.items():
            for step in chain:
                text = texts.get((key, step))
                if text is not None:
                    chosen[locale] = Template(text)
                    break
        templates = {locale: chosen[locale] for locale in self.locales if locale in chosen}
        return Resolved(key, templates, chosen.get(self.default), self.locales, self.default)

    def _report(self, plugin: GuardedPlugin, failures: Counter[str]) -> None:
        PLUGIN_ERRORS.labels(plugin.name, plugin.info.type).inc(sum(failures.values()))
        for error, count in failures.items():
            if (plugin.name, error) not in self._warned and len(self._warned) < WARNED_MAX:
                self._warned.add((plugin.name, error))
                log.error(
                    "Plugin '%s' failed on %d lang requests: %s (its entries go on without it)",
                    plugin.name,
                    count,
                    error,
                )
