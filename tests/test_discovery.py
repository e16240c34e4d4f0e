"""Discovery and validation of Python plugins (design §4, CONTRACT §3)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.entry import decode
from pipeline.plugin import Failure

GOOD = """
PLUGIN_INFO = {"name": "NAME", "version": "1.0.0", "type": "filter"}
def plugin_init(): return 0
def plugin_process(entry): return True
def plugin_shutdown(): pass
"""

# The design document's own example (§5.5.9), verbatim but for its Chinese comments.
DESIGN_SEVERITY = """
PLUGIN_INFO = {
    "name": "design_severity",
    "version": "1.0.0",
    "type": "filter",
    "capability": ["text"],
    "author": "Logloom Team",
    "description": "filter by level"
}
config = {
    "min_level": "INFO"
}
LEVEL_MAP = {"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3, "FATAL": 4}
def plugin_init():
    return 0
def plugin_process(entry):
    entry_level = entry.get("level", "INFO")
    min_level = config.get("min_level", "INFO")
    entry_level_value = LEVEL_MAP.get(entry_level, 1)
    min_level_value = LEVEL_MAP.get(min_level, 1)
    return entry_level_value >= min_level_value
def plugin_shutdown():
    pass
"""


def entry(level: str) -> object:
    return decode(b"1-0", {b"level": level.encode(), b"message": b"m"}, 65536)[0]


def config_for(tmp_path: Path, *enabled: str, **plugin_config: dict[str, object]) -> object:
    return parse_config(
        {"plugins": {"paths": [str(tmp_path)], "enabled": list(enabled), "config": plugin_config}}
    )


def test_bundled_severity_filter_takes_min_level_from_config(tmp_path: Path) -> None:
    config = config_for(tmp_path, "log_filter_severity", log_filter_severity={"min_level": "ERROR"})
    (plugin,) = load_plugins(config)  # type: ignore[arg-type]
    assert plugin.info.type == "filter" and plugin.runtime == "python"
    assert plugin.call_batch([entry("WARN"), entry("ERROR"), entry("FATAL")]) == [False, True, True]


def test_design_example_loads_unchanged_and_reads_its_yaml(tmp_path: Path) -> None:
    (tmp_path / "design_severity.py").write_text(DESIGN_SEVERITY)
    (tmp_path / "design_severity.yaml").write_text("min_level: WARN\n")
    (plugin,) = load_plugins(config_for(tmp_path, "design_severity"))  # type: ignore[arg-type]
    assert plugin.call_batch([entry("DEBUG"), entry("INFO"), entry("WARN")]) == [False, False, True]


def test_user_directory_shadows_a_bundled_plugin(tmp_path: Path) -> None:
    (tmp_path / "log_filter_severity.py").write_text(GOOD.replace("NAME", "log_filter_severity"))
    (plugin,) = load_plugins(config_for(tmp_path, "log_filter_severity"))  # type: ignore[arg-type]
    assert plugin.origin == str(tmp_path / "log_filter_severity.py")


def test_plugin_package_directory_with_plugin_yaml(tmp_path: Path) -> None:
    package = tmp_path / "filter_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent("""
        PLUGIN_INFO = {"name": "filter_pkg", "version": "0.2.0", "type": "filter"}
        seen = {}
        def plugin_init(config):
            seen.update(config)
            return 0
        def plugin_process(entry): return entry["module"] == seen["module"]
        def plugin_shutdown(): pass
    """)
    )
    (package / "plugin.yaml").write_text("module: AUTH\n")
    (plugin,) = load_plugins(config_for(tmp_path, "filter_pkg"))  # type: ignore[arg-type]
    assert plugin.info.version == "0.2.0"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (GOOD.replace("def plugin_process(entry): return True", ""), "missing plugin_process()"),
        (GOOD.replace("def plugin_shutdown(): pass", ""), "missing plugin_shutdown()"),
        (GOOD.replace("def plugin_init(): return 0", ""), "missing plugin_init()"),
        (GOOD.replace("1.0.0", "1.0"), "version '1.0' is not SemVer (MAJOR.MINOR.PATCH)"),
        (GOOD.replace('"filter"', '"transform"'), "unknown type 'transform'"),
        (GOOD.replace(', "version": "1.0.0"', ""), "PLUGIN_INFO lacks version"),
        (GOOD.replace("return 0", "return 1"), "plugin_init() returned 1, expected 0"),
        (
            GOOD.replace("return 0", "raise OSError('no model file')"),
            "plugin_init() raised OSError: no model file",
        ),
        ("import not_a_module_anywhere\n" + GOOD, "import failed: ModuleNotFoundError"),
        ("def plugin_init(): return 0\n", "no PLUGIN_INFO dict and no plugin_info()"),
    ],
)
def test_invalid_plugins_cost_one_warn_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, source: str, reason: str
) -> None:
    (tmp_path / "filter_bad.py").write_text(source.replace("NAME", "filter_bad"))
    (tmp_path / "filter_ok.py").write_text(GOOD.replace("NAME", "filter_ok"))
    with caplog.at_level(logging.WARNING, logger="logloom.plugins"):
        loaded = load_plugins(config_for(tmp_path, "filter_bad", "filter_ok"))  # type: ignore[arg-type]
    assert [plugin.name for plugin in loaded] == ["filter_ok"]
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"Failed to load plugin 'filter_bad.py': {reason}")


def test_enabled_but_missing_plugin_is_reported(tmp_path: Path) -> None:
    failures: list[str] = []
    assert load_plugins(config_for(tmp_path, "filter_nowhere"), failures=failures) == []  # type: ignore[arg-type]
    assert failures[0].startswith("Failed to load plugin 'filter_nowhere': not found in ")


def test_types_filter_skips_init_of_other_plugins(tmp_path: Path) -> None:
    (tmp_path / "sink_marker.py").write_text(
        textwrap.dedent(f"""
        PLUGIN_INFO = {{"name": "sink_marker", "version": "1.0.0", "type": "sink"}}
        def plugin_init():
            open({str(tmp_path / "initialised")!r}, "w").close()
            return 0
        def flush(entries): return 0
        def plugin_shutdown(): pass
    """)
    )
    assert load_plugins(config_for(tmp_path, "sink_marker"), types=["filter"]) == []  # type: ignore[arg-type]
    assert not (tmp_path / "initialised").exists()


def test_per_entry_faults_become_failures_not_exceptions(
    write_plugin: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write_plugin(
        "filter_moody",
        """
        PLUGIN_INFO = {"name": "filter_moody", "version": "1.0.0", "type": "filter"}
        def plugin_init(): return 0
        def plugin_process(entry):
            if entry["module"] == "boom":
                raise ValueError("cannot parse " + entry["message"])
            if entry["module"] == "change":
                entry["level"] = "FATAL"
            return "yes" if entry["module"] == "str" else True
        def plugin_shutdown(): pass
    """,
    )
    config = config_for(tmp_path / "plugins", "filter_moody")
    (plugin,) = load_plugins(config)  # type: ignore[arg-type]
    batch = [
        decode(b"1-0", {b"module": m.encode(), b"message": b"m"}, 65536)[0]
        for m in ("ok", "boom", "change", "str")
    ]
    results = plugin.call_batch(batch)
    assert results[0] is True
    assert results[1] == Failure("ValueError: cannot parse m")
    assert isinstance(results[2], Failure) and "read-only" in results[2].error
    assert results[3] == Failure("returned str, a filter must return bool")  # output check
