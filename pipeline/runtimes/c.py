"""C plugins: shared libraries with the function table of ``logloom_plugin.h`` (CONTRACT §4).

Loaded in process with ``dlopen``/``dlsym`` (ctypes). A call into C is cheap; building the
``log_entry_t`` array is what costs, so a batch is marshalled at once: every string of the batch
(the entry's JSON too) goes into one buffer with a single encode, and the structs are an array
of pointers into it, ~0.9 µs per entry (MEASUREMENTS.md: building a ``Structure`` per entry
costs more than batched IPC). ``plugin_process_batch`` is used when exported: one foreign call
per batch. A crash in here kills the worker; for untrusted code the same library runs in a host
subprocess instead (``mode: isolated``, see :mod:`pipeline.runtimes.process`).
"""

from __future__ import annotations

import ctypes
from array import array
from collections.abc import Collection, Mapping, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import orjson

from pipeline.entry import Entry
from pipeline.errors import PluginLoadError
from pipeline.plugin import Failure, PluginInfo, validate_info

HEADER_DIR = Path(__file__).resolve().parent.parent / "include"
FIELDS_PER_ENTRY = 6  # timestamp, level, module, message, lang_key, json: all const char *
POINTER_SIZE = ctypes.sizeof(ctypes.c_void_p)
ENTRY_SIZE = FIELDS_PER_ENTRY * POINTER_SIZE
SUFFIXES = (".so", ".dylib")
NO_RESULT = -(2**31)  # INT_MIN: a batch result the plugin did not write
UNAVAILABLE = -2  # LOGLOOM_UNAVAILABLE: a sink's destination is down, the entry waits


INFO_FIELDS = ("name", "version", "author", "type", "capability", "mode")


class CPluginInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_char_p) for name in INFO_FIELDS]


def is_c_plugin(path: Path) -> bool:
    return path.suffix in SUFFIXES


def name_from_file(path: Path) -> str:
    """``filter_x.so`` → ``filter_x``; ``libx.so`` → ``x``."""
    stem = path.name.split(".")[0]
    return stem[3:] if stem.startswith("lib") and len(stem) > 3 else stem


def _address(data: bytes) -> int:
    """Where the bytes object keeps its contents: C reads them in place, without a copy."""
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None
    return address


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else orjson.dumps(value).decode()


def marshal(entries: Sequence[Entry]) -> tuple[array[int], bytes]:
    """A ``log_entry_t[]`` for ``entries`` as an array of pointer words, and the one buffer the
    pointers point into (keep it alive for the call).

    All six strings of every entry are joined with NULs and encoded once; a struct is six
    pointers, so the running sum of the string lengths is the array itself, in order.
    """
    texts: list[Any] = []
    extend = texts.extend
    for entry in entries:
        get = entry.get
        lang_key = get("lang_key") or ""  # NULL below; "" keeps the join on its fast path
        json = entry.to_json().decode()
        extend((get("timestamp"), get("level"), get("module"), get("message"), lang_key, json))
    try:
        joined = "\0".join(texts)
    except TypeError:  # a missing field, or one that is not text (a numeric module)
        texts = [_text(value) for value in texts]
        joined = "\0".join(texts)
    if joined.isascii():  # the common case: byte offsets are character offsets
        blob = joined.encode("ascii") + b"\0"
        sizes = map(len, texts)
    else:
        encoded = [text.encode("utf-8", "surrogatepass") for text in texts]
        blob = b"\0".join(encoded) + b"\0"
        sizes = map(len, encoded)
    words = list(accumulate(map((1).__add__, sizes), initial=_address(blob)))
    del words[-1]  # the end of the last string
    for index, entry in enumerate(entries):
        if entry.get("lang_key") is None:
            words[FIELDS_PER_ENTRY * index + 4] = 0  # NULL when absent (CONTRACT §4)
    return array("Q" if POINTER_SIZE == 8 else "I", words), blob


def _symbol(library: ctypes.CDLL, name: str) -> Any | None:
    try:
        return getattr(library, name)
    except AttributeError:
        return None


def _decode(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def read_info(library: ctypes.CDLL, path: Path, settings: Mapping[str, Any]) -> PluginInfo:
    """From ``plugin_info()`` when exported; else the file name and ``<name>.yaml``."""
    info_function = _symbol(library, "plugin_info")
    if info_function is not None:
        info_function.restype = ctypes.POINTER(CPluginInfo)
        pointer = info_function()
        if not pointer:
            raise PluginLoadError("plugin_info() returned NULL")
        raw = pointer.contents
        fields = {name: _decode(getattr(raw, name)) for name in INFO_FIELDS}
        fields["mode"] = fields["mode"] or "sync"
        return validate_info(fields, str(path))
    name = str(settings.get("name") or name_from_file(path))
    kind = settings.get("type") or next(
        (prefix for prefix in ("filter", "sink", "ai", "lang") if name.startswith(prefix + "_")),
        None,
    )
    if kind is None:
        raise PluginLoadError(
            "no plugin_info() and no type: name it filter_*.so or sink_*.so, or set type in "
            f"{path.with_suffix('.yaml').name}"
        )
    return validate_info(
        {"name": name, "type": kind, "version": str(settings.get("version", "0.0.0"))},
        str(path),
    )


class CPlugin:
    """A loaded library adapted onto the Plugin protocol."""

    runtime = "c"

    def __init__(self, library: ctypes.CDLL, info: PluginInfo, origin: str) -> None:
        self.library = library
        self.info = info
        self.origin = origin
        self._process = _symbol(library, "plugin_process")  # a lang plugin may have none
        if self._process is not None:
            self._process.argtypes = [ctypes.c_void_p]
            self._process.restype = ctypes.c_int
        self._resolve = _symbol(library, "plugin_resolve") if info.type == "lang" else None
        if self._resolve is not None:
            self._resolve.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            self._resolve.restype = ctypes.c_void_p  # not c_char_p: NULL must stay None
        self._batch = _symbol(library, "plugin_process_batch")
        if self._batch is not None:
            self._batch.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            self._batch.restype = ctypes.c_int
        self._shutdown = library.plugin_shutdown
        self._shutdown.restype = None
        self._is_filter = info.type == "filter"

    @property
    def name(self) -> str:
        return self.info.name

    def call_batch(self, entries: Sequence[Entry]) -> list[Any]:
        if not entries:
            return []
        if self._resolve is not None:
            return [self._resolve_one(request) for request in entries]
        words, buffer = marshal(entries)
        base = words.buffer_info()[0]
        if self._batch is not None:
            codes = array("i", [NO_RESULT]) * len(entries)
            status = self._batch(base, len(entries), codes.buffer_info()[0])
            if status < 0:
                return [Failure(f"plugin_process_batch() returned {status}")] * len(entries)
        else:
            process = self._process
            assert process is not None, "checked at load: only a lang plugin may lack it"
            codes = array("i", [process(base + ENTRY_SIZE * i) for i in range(len(entries))])
        del buffer  # alive until here: the library read from it
        return [self._result(code) for code in codes]

    def _resolve_one(self, request: Entry) -> str | Failure | None:
        """``plugin_resolve(lang_key, locale)`` for one lang request: the text (copied at once,
        it is the plugin's only until its next call), None for NULL (an unknown key)."""
        assert self._resolve is not None
        key, locale = request.get("lang_key"), request.get("locale")
        if not isinstance(key, str):
            return Failure("a lang request without a lang_key")
        encoded = key.encode("utf-8", "surrogatepass")
        if b"\0" in encoded:
            return None  # no C string can name it
        address = self._resolve(encoded, locale.encode() if isinstance(locale, str) else None)
        if not address:
            return None
        try:
            return ctypes.string_at(address).decode("utf-8")
        except UnicodeDecodeError as exc:
            return Failure(f"plugin_resolve() returned text that is not UTF-8 ({exc.reason})")

    def _result(self, code: int) -> bool | int | Failure:
        if code == NO_RESULT:
            return Failure("plugin_process_batch() set no result for this entry")
        if self._is_filter:
            if code == 1:
                return True
            if code == 0:
                return False
            return Failure(f"plugin_process() returned {code}")
        if code == UNAVAILABLE:
            return Failure(f"destination unavailable (plugin_process() returned {code})", True)
        return code if code == 0 else Failure(f"plugin_process() returned {code}")

    def shutdown(self) -> None:
        self._shutdown()


def open_c_plugin(path: Path, settings: Mapping[str, Any]) -> tuple[ctypes.CDLL, PluginInfo]:
    """dlopen and check a library without initialising it; PluginLoadError says what is wrong.

    ``settings`` (its ``<name>.yaml``) may name the type of a library without ``plugin_info``.
    """
    try:
        library = ctypes.CDLL(str(path.resolve()))
    except OSError as exc:
        raise PluginLoadError(f"dlopen failed: {exc}") from None
    has_resolve = _symbol(library, "plugin_resolve") is not None
    process = ("plugin_process",) if not has_resolve else ()
    for required in (*process, "plugin_init", "plugin_shutdown"):
        if _symbol(library, required) is None:
            raise PluginLoadError(f"missing {required}()")
    info = read_info(library, path, settings)
    if info.type == "lang" and not has_resolve:
        raise PluginLoadError("missing plugin_resolve()")
    if info.type != "lang" and _symbol(library, "plugin_process") is None:
        raise PluginLoadError("missing plugin_process()")
    return library, info


def start_c_plugin(
    library: ctypes.CDLL, info: PluginInfo, origin: str, config: Mapping[str, Any]
) -> CPlugin:
    """``plugin_configure(config as JSON)`` when exported, then ``plugin_init()``."""
    configure = _symbol(library, "plugin_configure")
    if configure is not None:
        configure.argtypes = [ctypes.c_char_p]
        configure.restype = ctypes.c_int
        status = configure(orjson.dumps(dict(config), default=str))
        if status != 0:
            raise PluginLoadError(f"plugin_configure() returned {status}, expected 0")
    init = library.plugin_init
    init.restype = ctypes.c_int
    status = init()
    if status != 0:
        raise PluginLoadError(f"plugin_init() returned {status}, expected 0")
    return CPlugin(library, info, origin)


def load_c_plugin(
    path: Path, config: Mapping[str, Any], types: Collection[str] | None = None
) -> CPlugin | None:
    """Open, configure and initialise one C plugin; None if valid but not of ``types``."""
    library, info = open_c_plugin(path, config)
    if types is not None and info.type not in types:
        return None
    return start_c_plugin(library, info, str(path), config)
