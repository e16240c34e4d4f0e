"""RestrictedPython mode (``restricted: true``): a plugin compiled as a subset of Python.

The stricter, opt-in layer of design §5.5.6 for plugins that fit it — pure logic over entries,
like a severity or keyword filter. The plugin's source is compiled with RestrictedPython, so
names starting with ``_`` (the way out to ``__class__.__subclasses__()`` and friends), ``exec``,
``eval``, ``open`` and ``__import__`` do not exist for it; it may import only the modules of
:data:`ALLOWED_MODULES`. It still runs inside the sandboxed host: this is a layer on top of the
sandbox, not instead of it. A plugin that needs more than this (files, C extensions) runs in the
plain sandbox.
"""

from __future__ import annotations

import builtins as python_builtins
import operator
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.errors import PluginLoadError

ALLOWED_MODULES = frozenset(
    {
        "collections", "datetime", "functools", "hashlib", "itertools", "json", "math",
        "random", "re", "statistics", "time",
    }
)  # fmt: skip
"""Not ``string`` (``Formatter`` reaches attributes RestrictedPython's guard never sees) nor
``typing`` (``get_type_hints`` evaluates strings, unrestricted)."""

IN_PLACE: Mapping[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "|=": operator.ior,
    "&=": operator.iand, "^=": operator.ixor, "<<=": operator.ilshift, ">>=": operator.irshift,
}  # fmt: skip


def guarded_import(
    name: str,
    globals: Mapping[str, Any] | None = None,
    locals: Mapping[str, Any] | None = None,
    fromlist: tuple[str, ...] = (),
    level: int = 0,
) -> ModuleType:
    if level != 0 or name.split(".")[0] not in ALLOWED_MODULES:
        raise ImportError(f"restricted mode: import of '{name}' is not allowed")
    return __import__(name, globals, locals, fromlist, level)


def guarded_getattr(getattr_: Callable[..., Any]) -> Callable[..., Any]:
    """RestrictedPython's attribute guard, and no way from an allowed module to another one:
    ``statistics.sys`` (every module imports others) would hand the plugin ``sys.modules``."""

    def guard(obj: Any, name: str, *default: Any) -> Any:
        value = getattr_(obj, name, *default)
        if isinstance(value, ModuleType) and value.__name__.split(".")[0] not in ALLOWED_MODULES:
            raise AttributeError(f"restricted mode: module '{value.__name__}' is not allowed")
        return value

    return guard


def in_place(op: str, target: Any, value: Any) -> Any:
    return IN_PLACE[op](target, value)


def load_restricted_module(path: Path) -> ModuleType:
    """Compile and run a plugin file under RestrictedPython; PluginLoadError lists what in its
    source is not allowed."""
    try:
        from RestrictedPython.compile import compile_restricted_exec
        from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
        from RestrictedPython.Guards import (
            full_write_guard,
            guarded_iter_unpack_sequence,
            guarded_unpack_sequence,
            safe_builtins,
            safer_getattr,
        )
        from RestrictedPython.Limits import limited_builtins
        from RestrictedPython.PrintCollector import PrintCollector
        from RestrictedPython.Utilities import utility_builtins
    except ImportError:
        raise PluginLoadError(
            "restricted mode needs RestrictedPython: pip install 'logloom[sandbox]'"
        ) from None
    if path.is_dir():
        raise PluginLoadError("restricted mode takes a single .py file, not a package")
    compiled = compile_restricted_exec(path.read_text(), filename=str(path))
    if compiled.errors or compiled.code is None:
        raise PluginLoadError("not allowed in restricted mode: " + "; ".join(compiled.errors))
    builtins = {**safe_builtins, **limited_builtins, **utility_builtins}
    for name in ("dict", "list", "set", "frozenset", "tuple", "min", "max", "sum", "any",
                 "all", "enumerate", "sorted", "reversed", "map", "filter", "zip", "iter",
                 "next", "bytes"):  # fmt: skip
        builtins[name] = getattr(python_builtins, name)
    builtins["__import__"] = guarded_import
    module = ModuleType(f"logloom_restricted_{path.stem}")
    module.__dict__.update(
        __builtins__=builtins,
        __name__=module.__name__,
        __file__=str(path),
        _getattr_=guarded_getattr(safer_getattr),
        _getitem_=default_guarded_getitem,
        _getiter_=default_guarded_getiter,
        _iter_unpack_sequence_=guarded_iter_unpack_sequence,
        _unpack_sequence_=guarded_unpack_sequence,
        _write_=full_write_guard,
        _inplacevar_=in_place,
        _print_=PrintCollector,
    )
    try:
        exec(compiled.code, module.__dict__)  # the code RestrictedPython compiled
    except Exception as exc:
        raise PluginLoadError(f"import failed: {type(exc).__name__}: {exc}") from exc
    return module
