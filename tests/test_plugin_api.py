"""``pipeline.plugin_api``: mypy --strict accepts plugins that keep the contract and names what is
wrong with those that do not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from plugin_kit import ROOT

import pipeline.plugin_api as api

pytestmark = pytest.mark.plugins

PLUGINS = {
    "lang_good": """
        from pipeline.plugin_api import PluginConfig, PluginInfoDict
        PLUGIN_INFO: PluginInfoDict = {"name": "lang_good", "version": "1.0.0", "type": "lang"}
        def plugin_init(config: PluginConfig) -> int: return 0
        def resolve(lang_key: str, locale: str | None = None) -> str | None: return None
        def plugin_shutdown() -> None: pass
    """,
    "sink_bad": """
        from pipeline.plugin_api import LogEntry, PluginConfig, PluginInfoDict
        PLUGIN_INFO: PluginInfoDict = {"name": "sink_bad", "version": "1.0.0", "type": "sinks"}
        def plugin_init(config: PluginConfig) -> int: return 0
        def plugin_process(entry: LogEntry) -> None: print(entry)
        def plugin_shutdown() -> None: pass
    """,
    "check": """
        from pipeline.plugin_api import LangPlugin, SinkPlugin
        import lang_good, sink_bad
        lang: LangPlugin = lang_good
        sink: SinkPlugin = sink_bad
    """,
}


def test_mypy_strict_holds_plugins_to_their_type(tmp_path: Path) -> None:
    for name, source in PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "check.py"],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, result.stdout
    assert errors[0].startswith("sink_bad.py:2: error: Incompatible types"), errors
    assert "Literal['sinks']" in errors[0]
    assert errors[1].startswith("check.py:4: error: Incompatible types in assignment"), errors
    assert "def plugin_process(entry: LogEntry) -> int" in result.stdout  # what was expected
    assert "def plugin_process(entry: LogEntry) -> None" in result.stdout  # and what it got


def test_the_api_names_import_at_run_time() -> None:
    assert api.API_VERSION == "1.0"
    assert set(api.__all__) <= set(dir(api))
    assert api.PluginInfoDict.__required_keys__ == {"name", "version", "type"}
    assert "message" in api.LogEntry.__optional_keys__
