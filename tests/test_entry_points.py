"""Plugins that installed distributions register as ``logloom.plugins`` entry points (design §4).

A real wheel is built from ``tests/fixtures/wheel_plugin`` and installed with pip into a private
directory under ``tmp_path``. Only subprocesses see it (``PYTHONPATH``), so this environment
stays clean and the test is independent of every other one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "wheel_plugin"
LOGLOOM = Path(sys.executable).with_name("logloom")
ENTRY_POINT_GROUP = "logloom.plugins"

PROBE = """
import json
from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.entry import Entry

config = parse_config(
    {"plugins": {"enabled": ["logloom_hello_filter", "logloom_future_filter"]}}
)
failures = []
plugins = load_plugins(config, failures=failures)
entries = [
    Entry({"level": "INFO", "module": "APP", "message": "hello world"}),
    Entry({"level": "INFO", "module": "APP", "message": "disk almost full"}),
]
report = {
    "plugins": [
        {
            "name": plugin.name,
            "runtime": plugin.runtime,
            "origin": plugin.origin,
            "results": plugin.call_batch(entries),
        }
        for plugin in plugins
    ],
    "failures": failures,
}
for plugin in plugins:
    plugin.shutdown()
print(json.dumps(report, default=repr))
"""


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or a test failure showing what it printed."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(source: Path, out: Path) -> Path:
    """A wheel of ``source`` in ``out``, offline, with this venv's setuptools (the dev extra)."""
    pip_wheel = ("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index")
    run(sys.executable, *pip_wheel, "-w", out, source)
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.mark.plugins
@pytest.mark.slow
def test_plugins_from_an_installed_wheel(tmp_path: Path) -> None:
    # setuptools writes build/ and *.egg-info beside the sources: build from a copy.
    source = shutil.copytree(FIXTURE, tmp_path / "src")
    out = tmp_path / "dist"
    out.mkdir()
    wheel = build_wheel(source, out)
    site = tmp_path / "site"
    pip_install = ("-m", "pip", "install", "--no-deps", "--no-index", "--no-compile")
    run(sys.executable, *pip_install, "--target", site, wheel)
    assert (site / "logloom_hello_filter.py").is_file()
    here = {point.name for point in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert "logloom_hello_filter" not in here, "the wheel leaked into the test's own environment"

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LOGLOOM_CONFIG", "LOGLOOM_REDIS_URL", "REDIS_URL")
    }
    env["PYTHONPATH"] = str(site)
    report = json.loads(run(sys.executable, "-c", PROBE, cwd=tmp_path, env=env))

    loaded = {plugin["name"]: plugin for plugin in report["plugins"]}
    assert set(loaded) == {"logloom_hello_filter"}, report
    hello = loaded["logloom_hello_filter"]
    assert hello["runtime"] == "python"
    assert Path(hello["origin"]).resolve().is_relative_to(site.resolve()), hello["origin"]
    assert hello["results"] == [False, True], "drops 'hello world', keeps the other"
    (failure,) = report["failures"]
    assert "logloom_future_filter" in failure
    assert "needs Logloom plugin API >=2.0, this Logloom offers 1.0" in failure

    listing = run(LOGLOOM, "plugins", "list", cwd=tmp_path, env=env)
    rows = {line.split()[0]: line for line in listing.splitlines()[1:] if line.strip()}
    assert "logloom_hello_filter" in rows, listing
    assert str(site / "logloom_hello_filter.py") in rows["logloom_hello_filter"], listing
    assert "invalid: needs Logloom plugin API >=2.0" in rows["logloom_future_filter"], listing
