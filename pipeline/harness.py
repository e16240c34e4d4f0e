"""``logloom plugins test``: a plugin put through what Logloom will do to it (design §5.5.8, §8.1).

The plugin is loaded by the loader the workers use, in each runtime it can run in (in process, a
plugin host subprocess, a sandboxed host), and then held to its contract: metadata and SemVer
(:func:`pipeline.plugin.validate_info`), the functions of its type, every result checked by
:mod:`pipeline.outputs` on generated entries and on edge cases (an empty message, unicode, the
largest entry ingest lets through, only the guaranteed fields, a ``lang_key`` without a message),
a p99 latency within budget and a memory footprint that does not grow with the calls. Each
check is one line of the report; :attr:`Report.failures` is what a non-zero exit lists.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline import outputs
from pipeline.ai import results_of
from pipeline.config import Config, PluginSettings
from pipeline.discovery import Candidate, name_of, plugin_config, timeout_ms
from pipeline.entry import Entry, decode
from pipeline.errors import MalformedEntry, PluginLoadError
from pipeline.lang import plugin_defaults
from pipeline.manifest import NAME_PREFIXES
from pipeline.plugin import Failure, Plugin, PluginInfo, describe_exception
from pipeline.runtimes import c as c_runtime
from pipeline.runtimes import is_plugin_file, open_plugin_file
from pipeline.runtimes.process import host_command, load_in_child
from pipeline.sandbox import SandboxSpec

RUNTIMES = ("inprocess", "isolated", "sandbox")
C_RUNTIMES = ("inprocess", "isolated")
"""What ``--runtime all`` means for a C library (it may still be asked for ``sandbox``)."""
DEFAULT_CALLS = 1000
LATENCY_WALL_S = 5.0
"""The latency run of one runtime stops after this long, however few calls it made."""
MAX_GROWTH_MB = 8.0
"""More resident memory than this after the calls, over what there was after a warm-up, is a
leak: a plugin that keeps a bounded cache stays under it."""


class UsageError(ValueError):
    """The harness was asked for something it cannot do (no such file, unknown runtime)."""


class _CallTimeout(BaseException):
    """Ends an in-process call past its deadline; a BaseException, which adapters let through."""


@dataclass(frozen=True)
class Check:
    """One line of the report: ``where`` is ``contract`` or a runtime."""

    where: str
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Figures:
    """What one runtime measured; memory in MB, latency in ms."""

    runtime: str
    engine: str
    calls: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    batch_us_per_entry: float = 0.0
    rss_growth_mb: float = 0.0
    heap_growth_mb: float | None = None
    host_peak_mb: float | None = None


@dataclass
class Decision:
    """What the plugin made of one line of the developer's ``--entries`` file."""

    line: int
    entry: str
    decision: str


@dataclass
class Report:
    path: str
    info: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)
    figures: list[Figures] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def to_json(self) -> bytes:
        return orjson.dumps({**asdict(self), "ok": not self.failures}, option=orjson.OPT_INDENT_2)


def runtimes_for(path: Path, wanted: str) -> list[str]:
    """The runtimes ``--runtime`` names: ``all`` is every one the plugin's language runs in."""
    if wanted == "all":
        return list(C_RUNTIMES if c_runtime.is_c_plugin(path) else RUNTIMES)
    if wanted not in RUNTIMES:
        raise UsageError(f"unknown runtime {wanted!r} (inprocess, isolated, sandbox or all)")
    return [wanted]


def check_plugin(
    path: str | Path,
    config: Config | None = None,
    runtimes: Sequence[str] | str = "all",
    entries_file: str | Path | None = None,
    calls: int = DEFAULT_CALLS,
    budget_ms: float | None = None,
    max_growth_mb: float = MAX_GROWTH_MB,
) -> Report:
    """Put the plugin at ``path`` through every check in each of ``runtimes``."""
    path = Path(path)
    if not path.exists() or not is_plugin_file(path):
        raise UsageError(f"{path}: not a plugin file (.py, a package directory, or .so)")
    if entries_file is not None and not Path(entries_file).is_file():
        raise UsageError(f"{entries_file}: no such entries file")
    config = config or Config()
    wanted = runtimes_for(path, runtimes) if isinstance(runtimes, str) else list(runtimes)
    report = Report(str(path))
    name = name_of(path.resolve())  # "." is a package directory too
    settings = config.plugins.settings.get(name, PluginSettings())
    try:
        plugin_settings = plugin_config(Candidate(name, path), config)
    except PluginLoadError as exc:
        report.checks.append(Check("contract", "config", False, str(exc)))
        return report
    with tempfile.TemporaryDirectory(prefix="logloom-harness-") as scratch:
        first: dict[int, str] | None = None
        for runtime in wanted:
            trial = _Trial(report, runtime, path, config, settings, plugin_settings, scratch)
            if not trial.load(contract=report.info is None):
                if report.info is None:
                    break  # the contract is broken: every runtime would say the same
                continue
            try:
                trial.run_checks(calls, budget_ms, max_growth_mb)
                if entries_file is not None:
                    answers = trial.feed(Path(entries_file), config, record=first is None)
                    first = _compare(report, runtime, first, answers, trial.info.type)
            finally:
                trial.close()
    return report


def _compare(
    report: Report, runtime: str, first: dict[int, str] | None, answers: dict[int, str], kind: str
) -> dict[int, str]:
    """Note where this runtime decided otherwise than the first one did (not for ai plugins,
    whose results may carry times)."""
    if first is None:
        return answers
    differing = [line for line, answer in answers.items() if first.get(line) != answer]
    if differing and kind != "ai":
        line = differing[0]
        report.notes.append(
            f"{runtime}: {len(differing)} decision(s) differ from {report.figures[0].runtime}'s, "
            f"first on line {line}: {answers[line]} instead of {first.get(line)}"
        )
    return first


class _Trial:
    """One runtime's run: load, the checks, the figures, the developer's entries."""

    def __init__(
        self,
        report: Report,
        runtime: str,
        path: Path,
        config: Config,
        settings: PluginSettings,
        plugin_settings: dict[str, Any],
        scratch: str,
    ) -> None:
        self.report = report
        self.runtime = runtime
        self.path = path
        self.config = config
        self.settings = settings
        self.plugin_settings = plugin_settings
        self.scratch = scratch
        self.timeout_s = timeout_ms(config, settings) / 1000
        self.plugin: Plugin | None = None

    @property
    def info(self) -> PluginInfo:
        assert self.plugin is not None
        return self.plugin.info

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.report.checks.append(Check(self.runtime, what, ok, detail))
        return ok

    def load(self, contract: bool) -> bool:
        try:
            self.plugin = self._load()
        except PluginLoadError as exc:
            message = str(exc)
            for prefix in ("init failed: ", "info failed: ", "cannot load plugin: "):
                message = message.removeprefix(prefix)
            if contract:
                self.report.checks.append(Check("contract", _category(message), False, message))
            else:
                self.check("loads", False, message)
            return False
        if contract:
            self._contract_passed(self.plugin.info)
        layers: list[str] = getattr(getattr(self.plugin, "link", None), "sandbox_layers", [])
        inside = f", sandboxed: {', '.join(layer.split(' (')[0] for layer in layers)}"
        return self.check("loads", True, f"as {self.plugin.runtime}" + (inside if layers else ""))

    def _load(self) -> Plugin:
        python = self.config.plugins.python
        config = self.plugin_settings
        if self.runtime == "inprocess":
            opened = open_plugin_file(self.path, config)
            if opened.info.type == "lang":
                config = {**plugin_defaults(self.config.lang), **config}
            return opened.start(config)
        is_c = c_runtime.is_c_plugin(self.path)
        spec = None
        if self.runtime == "sandbox":
            spec = SandboxSpec(
                work_dir=str(Path(self.scratch, "sandbox", name_of(self.path.resolve()))),
                max_memory_mb=python.max_memory,
                max_cpu_s=python.max_cpu_s,
                max_processes=python.max_processes,
                user=python.sandbox_user,
            )
        plugin = load_in_child(
            host_command(self.path, spec, python.max_memory),
            str(self.path),
            "c-isolated" if is_c else "python-subprocess",
            dict(config),
            int(self.timeout_s * 1000),
            None,
            {**plugin_defaults(self.config.lang), **config},
        )
        assert plugin is not None  # no type filter was asked for
        return plugin

    def _contract_passed(self, info: PluginInfo) -> None:
        report = self.report
        report.info = {
            "name": info.name,
            "version": info.version,
            "type": info.type,
            "capability": list(info.capability),
            "mode": info.mode,
            **{key: value for key, value in info.extra.items() if key == "api"},
        }
        api = info.extra.get("api")
        extras = f"api {api}" if api else "no api range"
        report.checks += [
            Check("contract", "metadata", True, f"name {info.name}, type {info.type}, {extras}"),
            Check("contract", "version is SemVer", True, info.version),
            Check("contract", "required functions", True, _hooks(self.path, info)),
        ]
        if not info.name.startswith(NAME_PREFIXES[info.type]):
            report.notes.append(
                f"name {info.name!r}: {info.type} plugins are named {NAME_PREFIXES[info.type]}* "
                "(design §9.2)"
            )
        if not api and not c_runtime.is_c_plugin(self.path):
            report.notes.append('no "api" range in PLUGIN_INFO: declare one, e.g. ">=1.0,<2"')

    def close(self) -> None:
        if self.plugin is None:
            return
        try:
            with self._deadline(1):
                self.plugin.shutdown()
        except (Exception, _CallTimeout) as exc:
            self.check("plugin_shutdown", False, describe_exception(exc))

    @contextlib.contextmanager
    def _deadline(self, count: int) -> Iterator[None]:
        """In process, a call past the workers' deadline is ended (Python code only: a C
        function in a loop is not interruptible; run it ``--runtime isolated``)."""
        if self.runtime != "inprocess" or threading.current_thread() is not threading.main_thread():
            yield
            return

        def expire(_signum: int, _frame: object) -> None:
            raise _CallTimeout

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s * (1 + count / 100))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def answers(self, entries: Sequence[Entry]) -> list[Any]:
        """One checked result per entry, as the stage would see it: a value its type allows, or
        a Failure saying what is wrong (an exception, a crash, a bad result, too late)."""
        assert self.plugin is not None
        try:
            with self._deadline(len(entries)):
                if self.info.type == "ai":
                    results = [self._ai_answer(entry) for entry in entries]
                else:
                    results = self.plugin.call_batch(entries)
        except _CallTimeout:
            late = f"did not answer in {self.timeout_s * 1000:.0f} ms"
            results = [Failure(late)] * len(entries)
        except Exception as exc:
            results = [Failure(describe_exception(exc))] * len(entries)
        return outputs.screen(results, self.info.type)[0]

    def _ai_answer(self, entry: Entry) -> Any:
        """Every partial result is checked as the ai worker checks it; the final one returned."""
        assert self.plugin is not None
        final: Any = None
        try:
            for result, is_final in results_of(self.plugin, entry):
                problem = outputs.check(result, "ai")
                if problem is not None:
                    return Failure(problem if is_final else f"partial result: {problem}")
                final = result
        except Exception as exc:
            return Failure(describe_exception(exc))
        return final

    def run_checks(self, calls: int, budget_ms: float | None, max_growth_mb: float) -> None:
        kind = self.info.type
        generated = generated_entries(kind)
        results = self.answers(generated)
        failed = [(e, r) for e, r in zip(generated, results, strict=True) if _failed(r)]
        self.check(
            f"{len(generated)} generated entries",
            not failed,
            _failed_detail(failed) if failed else f"every result a valid {kind} result",
        )
        for label, entry in edge_cases(kind, self.config.ingest.max_entry_bytes):
            (result,) = self.answers([entry])
            self.check(label, not _failed(result), _show(result, kind))
        self._measure(generated, calls, budget_ms, max_growth_mb)

    def _measure(
        self, entries: list[Entry], calls: int, budget_ms: float | None, max_growth_mb: float
    ) -> None:
        assert self.plugin is not None
        figures = Figures(self.runtime, self.plugin.runtime)
        warm_up = max(1, calls // 10)
        for entry in entries[:warm_up]:
            self.answers([entry])
        pid = _host_pid(self.plugin)  # a new host, if an edge case crashed the first one
        restarts_before = int(getattr(self.plugin, "restarts", 0))
        rss_before = _rss_bytes(pid)
        latencies: list[float] = []
        ended = time.monotonic() + LATENCY_WALL_S
        for index in range(calls):
            entry = entries[index % len(entries)]
            started = time.perf_counter()
            self.answers([entry])
            latencies.append(time.perf_counter() - started)
            if time.monotonic() > ended:
                break
        figures.calls = len(latencies)
        figures.rss_growth_mb = (_rss_bytes(pid) - rss_before) / 2**20
        latencies.sort()
        figures.p50_ms = latencies[len(latencies) // 2] * 1000
        figures.p99_ms = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1000
        batch = entries[:100]
        started = time.perf_counter()
        self.answers(batch)
        figures.batch_us_per_entry = (time.perf_counter() - started) / len(batch) * 1e6
        if pid is not None:
            figures.host_peak_mb = _status_kb(pid, "VmHWM") / 1024
        else:
            figures.heap_growth_mb = self._heap_growth(entries, figures.calls)
        self.report.figures.append(figures)
        budget = budget_ms or self.settings.p99_budget_ms or self.timeout_s * 1000
        self.check(
            "latency",
            figures.p99_ms <= budget,
            f"p50 {figures.p50_ms:.3f} ms, p99 {figures.p99_ms:.3f} ms over {figures.calls} "
            f"calls (budget {budget:g} ms); {figures.batch_us_per_entry:.1f} µs an entry in a "
            "batch of 100",
        )
        restarts = int(getattr(self.plugin, "restarts", 0)) - restarts_before
        heap = figures.heap_growth_mb
        growth = max(figures.rss_growth_mb, heap or 0.0)
        self.check(
            "memory",
            growth <= max_growth_mb and restarts == 0,
            f"RSS {figures.rss_growth_mb:+.1f} MB"
            + (f", Python heap {heap:+.1f} MB" if heap is not None else "")
            + f" over {figures.calls} calls (at most {max_growth_mb:g})"
            + (f", host peak {figures.host_peak_mb:.1f} MB" if figures.host_peak_mb else "")
            + (f"; its host was restarted {restarts} time(s)" if restarts else ""),
        )

    def _heap_growth(self, entries: list[Entry], calls: int) -> float:
        """In process, what the calls left allocated on the Python heap, in MB: exact where RSS
        is not (memory freed earlier in the process is reused without growing it)."""
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for index in range(calls):
            self.answers([entries[index % len(entries)]])
        after = tracemalloc.get_traced_memory()[0]
        if not tracing:
            tracemalloc.stop()
        return (after - before) / 2**20

    def feed(self, path: Path, config: Config, record: bool) -> dict[int, str]:
        """Each line of the developer's JSON-lines file through the plugin; the decisions go to
        the report from the first runtime only. Returns them by line, for comparison."""
        decided: dict[int, str] = {}
        for number, entry in read_entries(path, self.info.type, config.ingest.max_entry_bytes):
            if isinstance(entry, str):
                decided[number] = entry
                shown = ""
            else:
                (result,) = self.answers([entry])
                decided[number] = _show(result, self.info.type)
                shown = entry.to_json().decode()
            if record:
                self.report.decisions.append(Decision(number, _cut(shown), decided[number]))
        return decided


def _category(message: str) -> str:
    """Which contract check a loader's refusal fails."""
    if "not SemVer" in message:
        return "version is SemVer"
    if message.startswith("missing "):
        return "required functions"
    if message.startswith(("plugin_init()", "plugin_configure()")):
        return "plugin_init"
    if message.startswith(
        (
            "PLUGIN_INFO",
            "no PLUGIN_INFO",
            "plugin_info()",
            "unknown type",
            "api ",
            "needs ",
            "no plugin_info()",
        )
    ):
        return "metadata"
    return "loads"


def _hooks(path: Path, info: PluginInfo) -> str:
    if c_runtime.is_c_plugin(path):
        verb = "plugin_resolve" if info.type == "lang" else "plugin_process"
    else:
        verb = "plugin_process or " + " / ".join(
            hook for hook in ("filter", "flush", "analyze", "resolve") if _is_verb(info.type, hook)
        )
    return f"plugin_init, {verb}, plugin_shutdown"


def _is_verb(kind: str, hook: str) -> bool:
    return {"filter": "filter", "sink": "flush", "ai": "analyze", "lang": "resolve"}[kind] == hook


def _failed(result: Any) -> bool:
    return isinstance(result, Failure)


def _failed_detail(failed: list[tuple[Entry, Any]]) -> str:
    causes: dict[str, int] = {}
    for _entry, result in failed:
        causes[result.error] = causes.get(result.error, 0) + 1
    shown = "; ".join(f"{error} ({count}x)" for error, count in list(causes.items())[:3])
    return f"{len(failed)} failed: {shown}"


def _show(result: Any, kind: str) -> str:
    """A result as the report shows it: ``keep``, ``delivered``, a text, or ``FAILED: ...``."""
    if isinstance(result, Failure):
        return f"FAILED: {result.error}"
    if kind == "filter":
        return "keep" if result else "drop"
    if kind == "sink":
        return "delivered"
    if result is None or result == {}:
        return "unknown key" if kind == "lang" else "nothing to report"
    return _cut(orjson.dumps(result).decode())


def _cut(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _host_pid(plugin: Plugin) -> int | None:
    child = getattr(getattr(plugin, "link", None), "child", None)
    return getattr(child, "pid", None)


def _status_kb(pid: int, field_name: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_bytes(pid: int | None) -> int:
    """Resident memory of the plugin's host, or of this process for an in-process plugin."""
    if pid is not None:
        return _status_kb(pid, "VmRSS") * 1024
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- entries -------------------------------------------------------------------------------

_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_MESSAGES = (
    ("AUTH", "User alice logged in"),
    ("AUTH", "Bad password for bob from 10.0.0.7"),
    ("DB", "Query took 1532 ms: SELECT * FROM orders WHERE id = 42"),
    ("DISK", "Disk /var is 97% full"),
    ("HTTP", 'GET /health 200 0.4ms "kube-probe/1.27"'),
    ("HTTP", "POST /api/orders 500 upstream timed out"),
    ("PAY", "Payment 7f3a declined: insufficient funds"),
    ("JOB", "Nightly export finished: 120394 rows"),
    ("KERNEL", "Out of memory: Killed process 4242 (java)"),
    ("CACHE", "Eviction storm: 12000 keys in 1s"),
    ("GC", "Pause of 230 ms in young generation"),
    ("NET", "Connection reset by peer 192.168.1.20:5432"),
)
_LANG_KEYS = ("auth.login", "auth.failed", "disk.full", "no.such.key")


def _entry(fields: dict[str, Any]) -> Entry:
    return Entry({"timestamp": "2026-11-30T12:00:00.000Z", **fields})


def generated_entries(kind: str) -> list[Entry]:
    """Ordinary traffic for a plugin of ``kind``: every level, several modules, extra fields;
    for a lang plugin, requests for known and unknown keys in a few locales."""
    if kind == "lang":
        return [
            Entry({"lang_key": key, "locale": locale})
            for key in _LANG_KEYS
            for locale in ("en", "zh", "de-AT")
        ]
    entries = []
    for index, (module, message) in enumerate(_MESSAGES):
        for level in _LEVELS:
            extra: dict[str, Any] = {"host": f"web-{index % 3}", "trace_id": f"{index:032x}"}
            if index % 4 == 0:
                extra["params"] = {"user": "alice", "attempt": index, "tags": ["a", "b"]}
            entries.append(_entry({"level": level, "module": module, "message": message, **extra}))
    return entries


_UNICODE = (
    "用户 alice 已登录 · ошибка диска · خطأ · 🚀🔥 · é vs e\u0301 · \u202eRTL\u202c · \t\x1b[31m"
)


def edge_cases(kind: str, max_entry_bytes: int) -> list[tuple[str, Entry]]:
    """The entries that break careless plugins, each with the name of its check and differing
    from ordinary traffic in one way. The huge one is as large as ingest lets an entry be
    (``ingest.max_entry_bytes``); "guaranteed fields only" has only the fields every entry has
    (timestamp, level, module, message)."""
    filler = "0123456789 abcdef 日志行 "
    huge = (filler * (max_entry_bytes // len(filler.encode()) + 1)).encode()
    huge_text = huge[: max_entry_bytes - 200].decode("utf-8", "ignore")
    if kind == "lang":
        return [
            ("empty lang_key", Entry({"lang_key": "", "locale": "en"})),
            ("unicode lang_key", Entry({"lang_key": "认证.登录🚀", "locale": "zh-Hant-TW"})),
            ("huge lang_key", Entry({"lang_key": "k." + "x" * 4096, "locale": "en"})),
            ("missing locale", Entry({"lang_key": "auth.login"})),
        ]
    extra = {"host": "web-0", "trace_id": "0" * 32, "params": {"user": "alice"}}
    return [
        ("empty message", _entry({"level": "INFO", "module": "", "message": "", **extra})),
        ("unicode", _entry({"level": "ERROR", "module": "认证", "message": _UNICODE, **extra})),
        ("huge message", _entry({"level": "WARN", "module": "BIG", "message": huge_text, **extra})),
        (
            "guaranteed fields only",
            _entry({"level": "INFO", "module": "APP", "message": "no host, no params"}),
        ),
        (
            "lang_key only",
            _entry({"level": "INFO", "module": "AUTH", "lang_key": "auth.login", **extra}),
        ),
    ]


def read_entries(path: Path, kind: str, max_entry_bytes: int) -> Iterator[tuple[int, Entry | str]]:
    """Each non-blank line of a JSON-lines file as the stage would receive it, or why ingest
    rejects it. Lang plugins get each object as a request (``lang_key``, ``locale``)."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            raw = line.strip()
            if not raw:
                continue
            try:
                if kind == "lang":
                    request = orjson.loads(raw)
                    if type(request) is not dict:
                        raise MalformedEntry("not a JSON object")
                    yield number, Entry(request)
                    continue
                stream_id = f"{int(time.time() * 1000)}-{number}".encode()
                entry, _ = decode(stream_id, {b"entry": raw}, max_entry_bytes)
            except (MalformedEntry, orjson.JSONDecodeError) as exc:
                yield (
                    number,
                    f"{'not a request' if kind == 'lang' else 'rejected at ingest'}: {exc}",
                )
                continue
            yield number, entry


# -- the report ----------------------------------------------------------------------------


def render(report: Report) -> str:
    """The report as the terminal shows it: one line per check, the failures again at the end."""
    info = report.info
    head = (
        f"Plugin {info['name']} {info['version']} ({info['type']}) from {report.path}"
        if info
        else f"Plugin {report.path}"
    )
    lines = [head]
    where = None
    for check in report.checks:
        if check.where != where:
            where = check.where
            lines.append(where if where == "contract" else f"runtime {where}")
        mark = "ok  " if check.ok else "FAIL"
        lines.append(f"  {mark}  {check.what}" + (f": {check.detail}" if check.detail else ""))
    if report.decisions:
        lines.append(f"decisions ({report.figures[0].runtime})")
        for decision in report.decisions:
            lines.append(f"  {decision.line:>4}  {decision.decision:<8}  {decision.entry}".rstrip())
    lines += [f"note: {note}" for note in report.notes]
    failures = report.failures
    if failures:
        lines.append(f"FAILED: {len(failures)} check(s)")
        lines += [f"  - {check.where}: {check.what}: {check.detail}" for check in failures]
    else:
        lines.append("PASSED")
    return "\n".join(lines)
