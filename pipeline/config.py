"""Configuration: validated data. Unknown keys and wrong types fail naming the file and the key.

The dataclasses below are the schema; ``config/logloom.yaml`` documents every key. A config file
may set any subset: what it leaves out keeps the default shown here.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import yaml

from pipeline.errors import ConfigError
from pipeline.keys import Keys
from pipeline.langpacks import is_locale
from pipeline.log import add_secret, add_secret_text, join_url, redact_url

DEFAULT_CONFIG_PATH = Path("config/logloom.yaml")
MAX_PARTITIONS = 1024


@dataclass
class RedisTlsConfig:
    """Files for ``rediss://`` URLs, so they need not be written into the URL."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass
class RedisConfig:
    url: str | None = None
    prefix: str = "logloom"
    embedded: Literal["auto", "always", "never"] = "auto"
    data_dir: str = ".logloom"
    tls: RedisTlsConfig = field(default_factory=RedisTlsConfig)
    partitions: int = 1
    cluster: bool = False


@dataclass
class IngestConfig:
    max_entry_bytes: int = 65536
    max_len: int = 1_000_000
    backpressure: Literal["wait", "fail"] = "wait"
    backpressure_timeout_s: float = 30.0
    producer_batch: int = 1000
    partition_by: str | None = None


@dataclass
class StagesConfig:
    batch_size: int = 500
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    claim_interval_s: float = 5.0
    max_deliveries: int = 5
    trim_interval_s: float = 5.0


@dataclass
class WorkersConfig:
    workers: int = 1


@dataclass
class DirectConfig:
    workers: int = 0  # above 0, `up` runs direct workers instead of filter and sink workers


@dataclass
class RetryConfig:
    max_attempts: int = 5
    backoff_initial_ms: int = 200
    backoff_max_ms: int = 10_000


@dataclass
class SinkConfig:
    workers: int = 1
    batch_size: int = 500
    flush_interval_ms: int = 1000
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass
class AiConfig:
    workers: int = 1
    batch_size: int = 1000
    flush_interval_ms: int = 2000
    max_queued_jobs: int = 20
    job_timeout_s: int = 300
    retries: int = 2
    retry_intervals_s: list[int] = field(default_factory=lambda: [1, 5])
    failed_sweep_interval_s: float = 5.0


@dataclass
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9464


@dataclass
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 9465
    refresh_ms: int = 1000
    history_minutes: int = 10


@dataclass
class PythonPluginsConfig:
    enabled: bool = True
    mode: Literal["embedded", "subprocess"] = "embedded"
    path: str | None = None
    enabled_plugins: list[str] = field(default_factory=list)
    timeout: int = 500
    max_memory: int = 100
    sandbox: bool = False
    restricted: bool = False
    max_cpu_s: int = 10
    max_processes: int = 32
    sandbox_user: str = "nobody"
    work_dir: str = ".logloom/plugins"


@dataclass
class CircuitConfig:
    failures: int = 5
    cooldown_s: float = 10.0


@dataclass
class PluginSettings:
    """How Logloom runs one plugin (``plugins.settings.<name>``), not the plugin's own config."""

    mode: Literal["inprocess", "isolated"] | None = None
    sandbox: bool | None = None
    restricted: bool | None = None
    timeout_ms: int | None = None
    on_failure: Literal["dlq", "pass"] = "dlq"
    p99_budget_ms: float | None = None
    circuit: CircuitConfig = field(default_factory=CircuitConfig)


@dataclass
class ServiceConfig:
    address: str = ""
    type: Literal["filter", "sink", "ai", "lang"] = "filter"
    timeout_ms: int = 500
    connect_timeout_ms: int = 2000


@dataclass
class PluginsConfig:
    enabled: list[str] = field(default_factory=lambda: ["log_filter_severity", "sink_jsonl"])
    paths: list[str] = field(default_factory=list)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, PluginSettings] = field(default_factory=dict)
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    verify: Literal["off", "sha256", "signature"] = "off"
    trusted_keys: list[str] = field(default_factory=list)
    pinned_sha256: dict[str, str] = field(default_factory=dict)
    python: PythonPluginsConfig = field(default_factory=PythonPluginsConfig)


@dataclass
class DemoConfig:
    rate: int = 50


@dataclass
class LangConfig:
    """How ``lang_key`` is resolved (:mod:`pipeline.lang`) and where language packs live."""

    locales: list[str] = field(default_factory=lambda: ["en"])
    default: str = "en"
    fallback: dict[str, list[str]] = field(default_factory=dict)
    packs_dir: str = "config/lang"
    edit_token: str | None = None


@dataclass
class AggregatorTlsConfig:
    """The aggregator's certificate and key; both set: it speaks TLS only."""

    cert_file: str | None = None
    key_file: str | None = None


@dataclass
class AggregatorConfig:
    """``logloom aggregator``: the central receiver remote nodes' ``sink_aggregator`` sends to."""

    host: str = "127.0.0.1"
    port: int = 7450
    token: str | None = None
    token_file: str | None = None
    tls: AggregatorTlsConfig = field(default_factory=AggregatorTlsConfig)
    max_batch_bytes: int = 64 * 1024 * 1024
    idle_timeout_s: float = 300.0
    dedup_window_s: int = 3600


@dataclass
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    filter: WorkersConfig = field(default_factory=WorkersConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    direct: DirectConfig = field(default_factory=DirectConfig)
    ai: AiConfig = field(default_factory=AiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    lang: LangConfig = field(default_factory=LangConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    source: str = "<defaults>"

    @property
    def keys(self) -> Keys:
        return Keys(self.redis.prefix, self.redis.partitions)

    def enabled_plugins(self) -> list[str]:
        """Every enabled plugin name once, in chain order: ``plugins.enabled`` first."""
        names = list(self.plugins.enabled)
        if self.plugins.python.enabled:
            names += self.plugins.python.enabled_plugins
        return list(dict.fromkeys(names))


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind)).replace("NoneType", "null")


def _check(kind: Any, value: Any, where: str) -> Any:
    """``value`` if it is of ``kind``, else a ConfigError naming ``where``."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return _check(option, value, where)
            except ConfigError:
                continue
        wanted = " or ".join(_describe(option) for option in typing.get_args(kind))
        raise ConfigError(f"{where}: expected {wanted}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise ConfigError(f"{where}: expected one of {_describe(kind)}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check(item, one, f"{where}[{index}]") for index, one in enumerate(value)]
    if origin is dict:
        key_kind, value_kind = typing.get_args(kind)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            _check(key_kind, key, where): _check(value_kind, one, f"{where}.{key}")
            for key, one in value.items()
        }
    if kind is Any:
        return value
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where)  # type: ignore[arg-type]
    if kind is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {_describe(kind)}, got {value!r}")
    if kind in (int, float) and value < 0:
        raise ConfigError(f"{where}: must not be negative, got {value!r}")
    return value


def _build(cls: type[Any], data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            place = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{place}: unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for key, value in data.items():
        values[key] = _check(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**values)


def parse_config(data: Any, source: str = "<defaults>") -> Config:
    """A Config from already-parsed YAML; ConfigError messages start with ``source``."""
    try:
        config: Config = _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    config.source = source
    _check_values(config)
    add_secret(config.redis.url)  # masked in every log line from now on
    _check_url(config, f"{source}: redis.url", tls=False)
    return config


def _check_values(config: Config) -> None:
    positive = {
        "ingest.max_entry_bytes": config.ingest.max_entry_bytes,
        "ingest.producer_batch": config.ingest.producer_batch,
        "stages.batch_size": config.stages.batch_size,
        "sink.batch_size": config.sink.batch_size,
        "sink.retry.max_attempts": config.sink.retry.max_attempts,
        "ai.batch_size": config.ai.batch_size,
        "ai.max_queued_jobs": config.ai.max_queued_jobs,
        "ai.job_timeout_s": config.ai.job_timeout_s,
        "stages.max_deliveries": config.stages.max_deliveries,
        "dashboard.refresh_ms": config.dashboard.refresh_ms,
        "dashboard.history_minutes": config.dashboard.history_minutes,
        "redis.partitions": config.redis.partitions,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{config.source}: {key}: must be at least 1, got {value}")
    for name, service in config.plugins.services.items():
        if not service.address:
            raise ConfigError(f"{config.source}: plugins.services.{name}.address: required")
    if not config.redis.prefix or ":" in config.redis.prefix:
        raise ConfigError(f"{config.source}: redis.prefix: must be non-empty without ':'")
    if config.redis.partitions > MAX_PARTITIONS:
        raise ConfigError(
            f"{config.source}: redis.partitions: at most {MAX_PARTITIONS}, got "
            f"{config.redis.partitions}"
        )
    if config.redis.cluster and config.redis.partitions < 2:
        # One partition's keys are in three slots: the filter stage's script would get CROSSSLOT.
        raise ConfigError(
            f"{config.source}: redis.cluster: needs redis.partitions of 2 or more (keys of one "
            "partition share a hash slot; with 1 they keep the plain names, in different slots)"
        )
    _check_tls(config)
    _check_lang(config)
    _check_aggregator(config)


def _check_lang(config: Config) -> None:
    lang = config.lang
    named = [
        ("lang.default", lang.default),
        *((f"lang.locales[{index}]", locale) for index, locale in enumerate(lang.locales)),
        *((f"lang.fallback.{locale}", locale) for locale in lang.fallback),
        *(
            (f"lang.fallback.{locale}[{index}]", step)
            for locale, steps in lang.fallback.items()
            for index, step in enumerate(steps)
        ),
    ]
    for where, locale in named:
        if not is_locale(locale):
            raise ConfigError(
                f"{config.source}: {where}: {locale!r} is not a locale (a BCP 47 tag such as "
                "en or zh-TW)"
            )
    if lang.edit_token is not None:
        if len(lang.edit_token) < 16:
            raise ConfigError(f"{config.source}: lang.edit_token: use at least 16 characters")
        add_secret_text(lang.edit_token)


def _check_aggregator(config: Config) -> None:
    aggregator = config.aggregator
    where = f"{config.source}: aggregator"
    if aggregator.token is not None and aggregator.token_file is not None:
        raise ConfigError(f"{where}: token and token_file: set one, not both")
    if aggregator.token is not None:
        if len(aggregator.token) < 16:
            raise ConfigError(f"{where}.token: use at least 16 characters")
        add_secret_text(aggregator.token)
    if aggregator.token_file is not None and not Path(aggregator.token_file).is_file():
        raise ConfigError(f"{where}.token_file: no such file: {aggregator.token_file}")
    tls = aggregator.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(f"{where}.tls: cert_file and key_file go together")
    for key in ("cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{where}.tls.{key}: no such file: {path}")
    if aggregator.max_batch_bytes < 1024:
        raise ConfigError(f"{where}.max_batch_bytes: must be at least 1024")
    if aggregator.port > 65535:
        raise ConfigError(f"{where}.port: must be at most 65535, got {aggregator.port}")


# redis-py's names for the TLS files, as ``rediss://`` URL query arguments.
TLS_QUERY_ARGS = {"ca_file": "ssl_ca_certs", "cert_file": "ssl_certfile", "key_file": "ssl_keyfile"}
URL_SCHEMES = ("redis://", "rediss://", "unix://")


def _check_tls(config: Config) -> None:
    tls = config.redis.tls
    for key in TLS_QUERY_ARGS:
        path = getattr(tls, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{config.source}: redis.tls.{key}: no such file: {path}")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(
            f"{config.source}: redis.tls: cert_file and key_file go together (a client "
            "certificate and its key)"
        )


def _check_url(config: Config, where: str, tls: bool = True) -> None:
    """The Redis URL (from the file or the environment) has a scheme redis-py knows, and
    ``redis.tls`` is set only for a ``rediss://`` one. Messages show the URL redacted."""
    url = config.redis.url
    if url is None:
        if tls and config.redis.cluster:
            raise ConfigError(
                f"{config.source}: redis.cluster: needs redis.url (any node of the cluster); "
                "an embedded Redis is never a cluster"
            )
        return
    if config.redis.cluster and url.startswith("unix://"):
        raise ConfigError(f"{where}: redis.cluster: a cluster is reached over TCP, not unix://")
    if not url.startswith(URL_SCHEMES):
        raise ConfigError(
            f"{where}: expected redis://, rediss:// or unix://, got {redact_url(url)!r}"
        )
    files = config.redis.tls
    if tls and any(getattr(files, k) for k in TLS_QUERY_ARGS) and not url.startswith("rediss://"):
        raise ConfigError(
            f"{config.source}: redis.tls: set, but the Redis URL {redact_url(url)} is not "
            "rediss:// (TLS)"
        )


def with_tls(url: str, tls: RedisTlsConfig) -> str:
    """``url`` with the ``redis.tls`` files as redis-py query arguments (``ssl_ca_certs``, ...),
    so one string carries the whole connection to every client, RQ's and child processes'
    included. Only ``rediss://`` URLs get them; arguments already in the URL win."""
    if not url.startswith("rediss://"):
        return url
    parts = urlsplit(url)
    present = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    extra = {
        argument: str(Path(path).resolve())
        for key, argument in TLS_QUERY_ARGS.items()
        if (path := getattr(tls, key)) and argument not in present
    }
    if not extra:
        return url
    query = "&".join(part for part in (parts.query, urlencode(extra, safe="/")) if part)
    return join_url(parts._replace(query=query))


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: ``--config``, else LOGLOOM_CONFIG, else ./config/logloom.yaml."""
    if explicit:
        return Path(explicit)
    if os.environ.get("LOGLOOM_CONFIG"):
        return Path(os.environ["LOGLOOM_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config, then apply LOGLOOM_REDIS_URL (or REDIS_URL)."""
    chosen = config_path(path)
    if chosen is None:
        config = parse_config({})
    else:
        try:
            text = chosen.read_text()
        except OSError as exc:
            raise ConfigError(f"{chosen}: cannot read: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{chosen}: not valid YAML: {exc}") from None
        config = parse_config(data, str(chosen))
    env_name = next((n for n in ("LOGLOOM_REDIS_URL", "REDIS_URL") if os.environ.get(n)), None)
    if env_name:
        config.redis.url = os.environ[env_name]
    add_secret(config.redis.url)  # masked in every log line from now on
    _check_url(config, env_name or f"{config.source}: redis.url")
    return config
