"""Configuration: validated data; errors name the file and the key (exit 2)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import Config, load_config, parse_config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_parses_and_documents_the_defaults() -> None:
    shipped = load_config(ROOT / "config" / "logloom.yaml")
    defaults = parse_config({})
    assert dataclasses.asdict(shipped) | {"source": ""} == dataclasses.asdict(defaults) | {
        "source": ""
    }


def test_every_bundled_plugin_example_config_is_a_mapping() -> None:
    for path in (ROOT / "plugins" / "python").glob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"redis": {"urll": "x"}}, "f.yaml: redis.urll: unknown key"),
        ({"stages": {"batch_size": "many"}}, "f.yaml: stages.batch_size: expected int, got 'many'"),
        ({"stages": {"batch_size": 0}}, "stages.batch_size: must be at least 1"),
        ({"stages": {"block_ms": -5}}, "stages.block_ms: must not be negative"),
        (
            {"ingest": {"backpressure": "drop"}},
            "ingest.backpressure: expected one of 'wait' | 'fail'",
        ),
        ({"plugins": {"enabled": "log_filter_severity"}}, "plugins.enabled: expected a list"),
        ({"plugins": {"python": {"sandbox": "yes"}}}, "plugins.python.sandbox: expected bool"),
        ({"sink": {"retry": {"max_attempts": True}}}, "sink.retry.max_attempts: expected int"),
        ({"redis": {"prefix": "a:b"}}, "redis.prefix: must be non-empty without ':'"),
        ([1, 2], "top level: expected a mapping"),
    ],
)
def test_bad_values_name_file_and_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "f.yaml")
    assert message in str(raised.value)


def test_environment_overrides_the_redis_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("redis: {url: 'redis://configured:1/0'}\n")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("LOGLOOM_REDIS_URL", "redis://env:2/0")
    assert load_config(path).redis.url == "redis://env:2/0"


def test_enabled_plugins_merge_both_lists_in_order() -> None:
    config = parse_config(
        {"plugins": {"enabled": ["a", "b"], "python": {"enabled_plugins": ["b", "c"]}}}
    )
    assert config.enabled_plugins() == ["a", "b", "c"]
    assert isinstance(config, Config)


def test_cli_exits_2_with_one_line_naming_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  batch_sise: 10\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(path), "validate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"logloom: {path}: stages.batch_sise: unknown key (known: batch_size, block_ms, "
        "claim_idle_ms, claim_interval_s, max_deliveries, trim_interval_s)"
    ]


def test_cli_reports_yaml_syntax_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("redis: [unclosed\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(path), "status"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"logloom: {path}: not valid YAML" in result.stderr
