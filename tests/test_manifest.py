"""The ``manifest:`` section of a plugin's YAML (issue 9 part 4): read by discovery before the
plugin's code runs, checked against the code's own metadata, and never part of the config."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import cli
from pipeline.config import PluginSettings, parse_config
from pipeline.discovery import Candidate, load_plugins, sandbox_spec
from pipeline.entry import Entry
from pipeline.errors import PluginLoadError
from pipeline.manifest import parse

PACKAGE = """
import pathlib
pathlib.Path(__file__).with_name("imported").write_text("yes")
PLUGIN_INFO = {"name": "filter_seen", "version": "1.2.0", "type": "filter"}
seen = {}
def plugin_init(config):
    seen.update(config)
    return 0
def plugin_process(entry):
    return sorted(seen) == ["word"] and seen["word"] not in entry["message"]
def plugin_shutdown(): pass
"""
MANIFEST = {"name": "filter_seen", "version": "1.2.0", "type": "filter", "runtime": "python",
            "entry_point": "filter_seen", "capabilities": ["text"], "api": ">=1.0,<2"}  # fmt: skip


def package(tmp_path: Path, manifest: dict[str, Any] | None, **config: Any) -> Path:
    """A plugin package ``filter_seen/`` whose plugin.yaml holds ``manifest`` and ``config``."""
    directory = tmp_path / "plugins" / "filter_seen"
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    document = {**({"manifest": manifest} if manifest is not None else {}), **config}
    (directory / "plugin.yaml").write_text(yaml.safe_dump(document))
    return directory


def load(tmp_path: Path, **settings: Any) -> tuple[list[Any], list[str]]:
    config = parse_config({"plugins": {"enabled": ["filter_seen"],
                                       "paths": [str(tmp_path / "plugins")],
                                       "settings": {"filter_seen": settings}}})  # fmt: skip
    failures: list[str] = []
    return load_plugins(config, failures=failures), failures


def test_the_manifest_is_not_config_and_config_files_without_one_still_work(
    tmp_path: Path,
) -> None:
    package(tmp_path, MANIFEST, word="secret")
    (plugin,), failures = load(tmp_path)
    assert failures == []
    assert plugin.call_batch([Entry({"message": "a secret"}), Entry({"message": "ok"})]) == [
        False,
        True,
    ], "plugin_init got exactly {'word': ...}: no manifest key"
    plugin.shutdown()


def test_a_plugin_without_manifest_loads_as_before(tmp_path: Path) -> None:
    package(tmp_path, None, word="secret")
    (plugin,), failures = load(tmp_path)
    assert failures == [] and plugin.info.version == "1.2.0"
    plugin.shutdown()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"version": "1.3.0"}, "manifest says version '1.3.0', the plugin's metadata says '1.2.0'"),
        ({"type": "sink"}, "manifest says type 'sink', the plugin's metadata says 'filter'"),
        ({"runtime": "c"}, "manifest says runtime 'c', filter_seen is python"),
        ({"api": ">=2.0"}, "manifest: needs Logloom plugin API >=2.0, this Logloom offers 1.0"),
        ({"color": "red"}, "manifest.color: unknown key (known: api, author, capabilities"),
        ({"version": "1.2"}, "manifest.version '1.2' is not SemVer"),
        ({"sandbox": "maybe"}, "manifest.sandbox 'maybe': one of optional, required, unsupported"),
    ],
)
def test_a_manifest_that_disagrees_refuses_the_plugin(
    tmp_path: Path, change: dict[str, Any], error: str
) -> None:
    directory = package(tmp_path, {**MANIFEST, **change}, word="x")
    loaded, (failure,) = load(tmp_path)
    assert loaded == []
    assert failure.startswith("Failed to load plugin 'filter_seen': ")
    assert error in failure
    if change.get("api") or "color" in change or change.get("runtime"):
        assert not (directory / "imported").exists(), "refused before any of its code ran"


def test_sandbox_needs(tmp_path: Path) -> None:
    package(tmp_path, {**MANIFEST, "sandbox": "required"})
    candidate = Candidate("filter_seen", tmp_path / "plugins" / "filter_seen")
    config = parse_config({})
    assert sandbox_spec(candidate, config, PluginSettings()) is not None, "required: sandboxed"
    assert sandbox_spec(candidate, config, PluginSettings(sandbox=False)) is None, "unless set off"

    manifest = {**MANIFEST, "sandbox": "unsupported"}
    (candidate.path / "plugin.yaml").write_text(yaml.safe_dump({"manifest": manifest}))
    _, (failure,) = load(tmp_path, sandbox=True)
    assert "manifest says sandbox: unsupported, and it is set to run sandboxed" in failure
    (candidate.path / "plugin.yaml").write_text(
        yaml.safe_dump({"manifest": {**MANIFEST, "network": True}})
    )
    _, (failure,) = load(tmp_path, sandbox=True)
    assert "manifest says network: true, and a sandbox forbids connections" in failure
    assert "(plugins.settings.filter_seen.sandbox: false to run it)" in failure


def test_parse_reads_every_key() -> None:
    manifest = parse(
        {**MANIFEST, "capabilities": "text, batch", "sandbox": "required", "network": True,
         "author": "ops", "description": "d", "license": "MIT"},
        "plugin.yaml",
    )  # fmt: skip
    assert manifest.capabilities == ("text", "batch")
    assert (manifest.sandbox, manifest.network, manifest.license) == ("required", True, "MIT")
    with pytest.raises(PluginLoadError, match=r"plugin\.yaml: manifest lacks version"):
        parse({"name": "x", "type": "filter"}, "plugin.yaml")


def test_plugins_validate_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = package(tmp_path, MANIFEST, word="x")
    assert cli.main(["plugins", "validate", str(directory)]) == 0
    assert capsys.readouterr().out.startswith(f"ok  filter_seen 1.2.0 (filter, python) {directory}")
    monkeypatch.chdir(directory)
    assert cli.main(["plugins", "validate", "."]) == 0, "from inside the project"
    assert capsys.readouterr().out.startswith(f"ok  filter_seen 1.2.0 (filter, python) {directory}")
    assert cli.main(["plugins", "validate", str(directory / "plugin.yaml")]) == 0
    capsys.readouterr()
    (directory / "plugin.yaml").write_text(yaml.safe_dump({"manifest": {**MANIFEST, "type": "ai"}}))
    assert cli.main(["plugins", "validate", str(directory)]) == 2
    assert "manifest says type 'ai'" in capsys.readouterr().err
