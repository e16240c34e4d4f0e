"""A scaffolded Python plugin as a wheel, installed into a fresh virtual environment with
``logloom plugins install`` (issue 9 parts 5 and 7), offline.

The fresh venv has no packages of its own: a ``.pth`` file makes this venv's site-packages (so
Logloom and pip) visible in it, as ``--system-site-packages`` would for a system Logloom. What
the plugin's wheel installs lands in the fresh venv only, never here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from pipeline import scaffold, signing

NAME = "filter_packaged"
DIST = "logloom-plugin-filter-packaged"
PROBE = """
import json, sys
from pipeline.config import load_config
from pipeline.discovery import load_plugins
from pipeline.entry import Entry

failures = []
plugins = load_plugins(load_config(sys.argv[1]), failures=failures)
batch = [Entry({"level": "INFO", "message": m}) for m in ("GET /healthcheck", "disk full")]
print(json.dumps({"failures": failures, "plugins": [
    {"name": p.name, "origin": p.origin, "results": p.call_batch(batch)} for p in plugins]}))
"""


def run(
    command: list[str | Path], cwd: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("LOGLOOM_CONFIG", "LOGLOOM_REDIS_URL", "REDIS_URL")}  # fmt: skip
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    if check:
        assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The plugin's wheel in a find-links directory, and a fresh venv's python."""
    base = tmp_path_factory.mktemp("packaging")
    project = scaffold.create("filter", NAME, "python", base / "src")
    wheels = base / "wheels"
    wheels.mkdir()
    # setuptools writes build/ and *.egg-info beside the sources: build from a copy.
    source = shutil.copytree(project, base / "build" / NAME)
    pip_wheel = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    run([sys.executable, *pip_wheel, "-w", wheels, source], base)
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], base)
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  base).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "logloom_here.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return wheels, python


def test_installed_wheel_is_found_listed_and_loaded(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    wheels, python = built
    (wheel,) = wheels.glob("*.whl")
    logloom = [python, "-m", "pipeline.cli"]
    offline = ["--no-index", "--find-links", wheels]

    # plugins.verify: signature refuses an unsigned wheel before installing anything.
    keys = tmp_path / "ops"
    run([*logloom, "plugins", "keygen", "--out", keys], tmp_path)
    config = tmp_path / "logloom.yaml"
    trusted = {"enabled": [NAME], "verify": "signature", "trusted_keys": [f"{keys}.pub"]}
    config.write_text(yaml.safe_dump({"plugins": trusted}))
    refused = run([*logloom, "--config", config, "plugins", "install", NAME, *offline], tmp_path,
                  check=False)  # fmt: skip
    assert refused.returncode == 1
    assert f"{wheel.name}: not signed: no {wheel.name}.sig beside it" in refused.stderr
    assert "not installed" in refused.stderr
    assert run([python, "-c", f"import importlib.util as u; print(u.find_spec({NAME!r}))"],
               tmp_path).stdout.strip() == "None"  # fmt: skip

    # Signed by the trusted key (published beside the wheel): verified, then installed.
    run([*logloom, "plugins", "sign", "--key", str(keys) + ".key", wheel], tmp_path)
    installed = run([*logloom, "--config", config, "plugins", "install", NAME, *offline], tmp_path)
    assert f"installed {wheel.name} (signature verified, key ops.pub)" in installed.stdout
    assert f"plugins: {NAME}" in installed.stdout

    # Found through its entry point; plugins list says which distribution it came from.
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"plugins": {"enabled": [NAME, "sink_jsonl"]}}))
    listing = run([*logloom, "--config", plain, "plugins", "list"], tmp_path).stdout
    row = next(line for line in listing.splitlines() if line.startswith(NAME + " "))
    assert f"pip: {DIST} 0.1.0" in row and "enabled #1" in row, listing
    site = Path(row.split()[-1])
    assert site.name == NAME and site.parent.name == "site-packages", row
    assert str(site).startswith(str(python.parent.parent)), "installed into the fresh venv"
    assert (site / "plugin.yaml").is_file() and (site / "py.typed").is_file()
    assert DIST not in {dist.metadata["Name"] for dist in metadata.distributions()}

    # The pipeline loads it (its plugin.yaml config, manifest checked) and it works.
    report = json.loads(run([python, "-c", PROBE, plain], tmp_path).stdout)
    assert report["failures"] == []
    loaded = {plugin["name"]: plugin for plugin in report["plugins"]}
    assert loaded[NAME]["results"] == [False, True], report
    assert loaded[NAME]["origin"] == str(site)
    validated = run([*logloom, "--config", plain, "validate"], tmp_path).stdout
    assert f"ok  {NAME} 0.1.0 (filter, python) {site}" in validated

    # With plugins.verify: signature the workers load it too: install put the publisher's
    # signature of the installed package beside it (site-packages/<name>.sig).
    assert json.loads((site.parent / f"{NAME}.sig").read_text())["from"] == wheel.name
    verified = json.loads(run([python, "-c", PROBE, config], tmp_path).stdout)
    assert verified["failures"] == [] and verified["plugins"][0]["results"] == [False, True]
    init = site / "__init__.py"
    init.write_text(init.read_text().replace("not in message", "in message"))
    tampered = json.loads(run([python, "-c", PROBE, config], tmp_path).stdout)
    assert tampered["plugins"] == []
    (failure,) = tampered["failures"]
    assert f"Failed to load plugin '{NAME}': changed since it was signed" in failure


def test_install_of_a_missing_distribution_fails_in_one_line(built: tuple[Path, Path],
                                                            tmp_path: Path) -> None:  # fmt: skip
    wheels, python = built
    done = run([python, "-m", "pipeline.cli", "plugins", "install", "filter_nowhere",
                "--no-index", "--find-links", wheels], tmp_path, check=False)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(
        "logloom: plugins install: pip could not fetch logloom-plugin-filter-nowhere: "
    )
    assert len(done.stderr.strip().splitlines()) == 1


def test_install_with_pinned_digests(built: tuple[Path, Path], tmp_path: Path) -> None:
    wheels, python = built
    (wheel,) = wheels.glob("*.whl")
    command = [python, "-m", "pipeline.cli", "--config", tmp_path / "pinned.yaml", "plugins",
               "install", NAME, "--no-index", "--find-links", wheels]  # fmt: skip
    pins: dict[str, str] = {}
    (tmp_path / "pinned.yaml").write_text(
        yaml.safe_dump({"plugins": {"verify": "sha256", "pinned_sha256": pins}})
    )
    refused = run(command, tmp_path, check=False)
    assert refused.returncode == 1
    assert f"{wheel.name}: no pinned sha256 for {wheel.name}" in refused.stderr

    pins[wheel.name] = signing.digest(wheel)
    (tmp_path / "pinned.yaml").write_text(
        yaml.safe_dump({"plugins": {"verify": "sha256", "pinned_sha256": pins}})
    )
    installed = run(command, tmp_path).stdout
    assert f"installed {wheel.name} (sha256 pinned)" in installed
    package_digest = signing.wheel_installs(wheel)[NAME]
    assert f"pin it for loading: plugins.pinned_sha256.{NAME}: {package_digest}" in installed
