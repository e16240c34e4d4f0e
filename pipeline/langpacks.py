"""Language packs: one YAML file per locale, ``<lang.packs_dir>/<locale>.yaml``.

A pack maps ``lang_key`` to a text, nested or flat (``auth: {login: ...}`` and
``auth.login: ...`` are the same key); a text may hold ``{name}`` placeholders, filled from an
entry's ``params`` (``{{`` and ``}}`` are literal braces). YAML rather than gettext ``.po``:
Logloom's keys are identifiers (``auth.login``), not English source sentences as ``.po``
msgids are; a pack is one readable file per locale that translators edit by hand, with no
compile step (``.mo``) and no extra dependency; and its parser reports every error with a line.

This module reads packs (every problem a :class:`~pipeline.errors.LangPackError` saying
``<file>:<line>: <what>``) and writes one key through to its file (:func:`write_text`), checked
first, in place so comments and layout stay, and atomically, so a watcher never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import LangEditError, LangPackError

SUFFIX = ".yaml"
LOCALE = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")
"""A BCP 47 tag (``en``, ``zh-TW``, ``zh-Hant-TW``); it is also a file name, so nothing else."""
KEY = re.compile(r"[\w-]+(?:\.[\w-]+)*")
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)\}")
"""``{name}`` is a placeholder; ``{{`` and ``}}`` are literal braces."""
TEXT_MAX_BYTES = 16 * 1024
"""As :data:`pipeline.outputs.LANG_RESULT_MAX_BYTES`: a longer text would be refused anyway."""
NULL_TAG = "tag:yaml.org,2002:null"


def placeholders(text: str) -> frozenset[str]:
    """The placeholder names in ``text``: ``"{user} from {ip}"`` → ``{"user", "ip"}``."""
    return frozenset(name for name in PLACEHOLDER.findall(text) if name)


def is_locale(value: object) -> bool:
    return isinstance(value, str) and LOCALE.fullmatch(value) is not None


def pack_path(directory: str | Path, locale: str) -> Path:
    if not is_locale(locale):
        raise LangEditError(f"{locale!r} is not a locale (a BCP 47 tag such as en or zh-TW)")
    return Path(directory) / f"{locale}{SUFFIX}"


def locale_of(path: str | Path) -> str | None:
    """The locale a pack file is for (``zh-TW.yaml`` → ``zh-TW``); None for any other file."""
    name = Path(path).name
    if not name.endswith(SUFFIX):
        return None
    locale = name[: -len(SUFFIX)]
    return locale if is_locale(locale) else None


@dataclass(frozen=True)
class Located:
    """One text of a pack file and where it is: its line, and the characters of its value."""

    text: str
    line: int
    start: int
    end: int


def _error(path: Path, line: int, problem: str) -> LangPackError:
    return LangPackError(f"{path}:{line}: {problem}")


def parse_pack(source: str, path: Path) -> dict[str, Located]:
    """Every key of a pack file's text; LangPackError with the file and line if malformed."""
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        raise _error(path, mark.line + 1 if mark else 1, problem) from None
    except yaml.YAMLError as exc:
        raise _error(path, 1, f"not valid YAML: {exc}") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise _error(path, root.start_mark.line + 1, "a language pack maps keys to texts")
    found: dict[str, Located] = {}
    _walk(root, "", path, found)
    return found


def _walk(node: yaml.MappingNode, prefix: str, path: Path, found: dict[str, Located]) -> None:
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode) or not KEY.fullmatch(key_node.value):
            shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
            raise _error(path, line, f"{shown!r} is not a key (letters, digits, _ - and dots)")
        key = f"{prefix}.{key_node.value}" if prefix else key_node.value
        if isinstance(value_node, yaml.MappingNode):
            _walk(value_node, key, path, found)
            continue
        if not isinstance(value_node, yaml.ScalarNode):
            raise _error(path, line, f"{key}: a text must be a string, not a list")
        if value_node.tag == NULL_TAG or value_node.value == "":
            raise _error(path, line, f"{key}: no text")
        if key in found:
            raise _error(path, line, f"{key}: defined twice (first on line {found[key].line})")
        found[key] = Located(
            value_node.value, line, value_node.start_mark.index, value_node.end_mark.index
        )


def read_pack(path: Path) -> dict[str, str]:
    """One pack file's texts by key; LangPackError naming the file (and line) if it cannot be."""
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, 1, f"not UTF-8: {exc.reason}") from None
    except OSError as exc:
        raise LangPackError(f"{path}: cannot read: {exc.strerror}") from None
    return {key: located.text for key, located in parse_pack(source, path).items()}


def pack_files(directory: str | Path) -> Iterator[tuple[str, Path]]:
    """``(locale, path)`` of every pack in ``directory``, sorted by locale."""
    for path in sorted(Path(directory).glob(f"*{SUFFIX}")):
        locale = locale_of(path)
        if locale is not None and path.is_file():
            yield locale, path


def read_packs(directory: str | Path) -> dict[str, dict[str, str]]:
    """Every pack in ``directory`` by locale; LangPackError for the first malformed one."""
    if not Path(directory).is_dir():
        raise LangPackError(f"{directory}: no such directory (lang.packs_dir)")
    return {locale: read_pack(path) for locale, path in pack_files(directory)}


def read_text(directory: str | Path, locale: str, key: str) -> str | None:
    """The text of ``key`` in ``locale``'s pack as the file says now; None if it has none."""
    path = pack_path(directory, locale)
    return read_pack(path).get(key) if path.is_file() else None


@dataclass(frozen=True)
class Edit:
    """What :func:`write_text` did."""

    path: Path
    previous: str | None
    """The text before, None for a new key."""
    mismatched: list[str] = field(default_factory=list)
    """After an edit of the default locale: the locales whose text for the key no longer has
    the same placeholders (they need translating again)."""
    rewritten: bool = False
    """The file could not be edited in place and was written anew, without its comments."""


def check_text(
    directory: str | Path, locale: str, key: str, text: object, default_locale: str
) -> str:
    """``text`` if it may become ``key``'s text in ``locale``; LangEditError saying why not.

    Outside the default locale, a key needs a text in the default locale first, and the
    placeholders must be the same as there: ``{user}`` translated as ``{usr}`` would never be
    filled."""
    pack_path(directory, locale)
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise LangEditError(f"{key!r} is not a key (letters, digits, _ - and dots)")
    if not isinstance(text, str) or not text:
        raise LangEditError("the text must be a non-empty string")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > TEXT_MAX_BYTES:
        raise LangEditError(f"the text is {size} bytes, over the {TEXT_MAX_BYTES}-byte limit")
    if locale == default_locale:
        return text
    reference = read_text(directory, default_locale, key)
    if reference is None:
        raise LangEditError(
            f"{key} has no text in the default locale {default_locale}: add it there first"
        )
    wanted, got = placeholders(reference), placeholders(text)
    if wanted != got:
        raise LangEditError(
            f"placeholders {_names(got)} do not match {_names(wanted)} of the default locale "
            f"{default_locale} ({reference!r})"
        )
    return text


def _names(names: frozenset[str]) -> str:
    return "{" + ", ".join(sorted(names)) + "}" if names else "(none)"


def write_text(
    directory: str | Path,
    locale: str,
    key: str,
    text: object,
    default_locale: str,
    locales: Mapping[str, object] | None = None,
) -> Edit:
    """Set ``key`` to ``text`` in ``locale``'s pack file, checked by :func:`check_text`.

    The value is replaced where it stands (a new key goes at the end), so comments and layout
    stay; the file is replaced atomically (a watcher sees the old file or the new one, never half
    of one), and concurrent editors take turns (``flock``). A pack file that does not exist yet
    is created only for a locale in ``locales`` (the configured ones and their fallbacks).
    A pack that is malformed now is not touched: LangPackError.
    """
    checked = check_text(directory, locale, key, text, default_locale)
    path = pack_path(directory, locale)
    with _locked(Path(directory)):
        if path.is_file():
            source = path.read_text(encoding="utf-8")
        elif locales is not None and locale not in locales:
            raise LangEditError(
                f"no pack for {locale} and it is not a configured locale (lang.locales)"
            )
        else:
            source = ""
        entries = parse_pack(source, path)
        previous = entries[key].text if key in entries else None
        updated, rewritten = _edited(source, entries, key, checked, path)
        _replace(path, updated)
    mismatched = _mismatched(directory, key, checked) if locale == default_locale else []
    return Edit(path, previous, mismatched, rewritten)


def _edited(
    source: str, entries: dict[str, Located], key: str, text: str, path: Path
) -> tuple[str, bool]:
    """The file's new text, edited in place if the result reads back right, else written anew."""
    quoted = json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted one
    if key in entries:
        located = entries[key]
        candidate = source[: located.start] + quoted + source[located.end :]
        if source[located.start : located.end].endswith("\n"):  # a block scalar's last newline
            candidate = source[: located.start] + quoted + "\n" + source[located.end :]
    else:
        candidate = f"{source}{'' if not source or source.endswith(chr(10)) else chr(10)}"
        candidate += f"{json.dumps(key)}: {quoted}\n"
    expected = {name: one.text for name, one in entries.items()} | {key: text}
    with contextlib.suppress(LangPackError):
        if {k: v.text for k, v in parse_pack(candidate, path).items()} == expected:
            return candidate, False
    dumped = yaml.safe_dump(expected, allow_unicode=True, sort_keys=False, width=1 << 16)
    return dumped, True


def _replace(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    if not directory.is_dir():
        raise LangEditError(f"{directory}: no such directory (lang.packs_dir)")
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _mismatched(directory: str | Path, key: str, text: str) -> list[str]:
    wanted = placeholders(text)
    found = []
    for locale, path in pack_files(directory):
        with contextlib.suppress(LangPackError):
            other = read_pack(path).get(key)
            if other is not None and placeholders(other) != wanted:
                found.append(locale)
    return found
