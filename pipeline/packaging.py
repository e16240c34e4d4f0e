"""Plugins as things to ship: checking a plugin project, installing a published plugin.

``logloom plugins validate PATH`` checks one plugin (a project directory, its ``plugin.yaml``,
a ``.py`` file or package, a ``.so``) the way a worker would load it: its manifest, the code's
own metadata against it, ``plugins.verify``, ``plugin_init``. ``logloom plugins install NAME``
installs the distribution ``logloom-plugin-NAME`` with pip, and with ``plugins.verify`` on it
checks the wheel before anything of it is installed: ``<wheel>.sig`` (``logloom plugins sign``
of the wheel, published beside it) under ``plugins.trusted_keys``, or the wheel's SHA-256 in
``plugins.pinned_sha256``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from itertools import pairwise
from pathlib import Path

import orjson

from pipeline import signing
from pipeline.config import Config
from pipeline.discovery import ENTRY_POINT_GROUP, Candidate, load_candidate, name_of
from pipeline.errors import PluginLoadError
from pipeline.manifest import Manifest, read
from pipeline.runtimes import is_plugin_file

DIST_PREFIX = "logloom-plugin-"


def plugin_in(path: Path) -> tuple[Path | None, Manifest | None]:
    """The plugin file or package a path names, and its manifest; (None, manifest) for a
    service project, whose code Logloom does not load."""
    path = path.resolve()
    if path.name == "plugin.yaml":
        path = path.parent
    if path.is_dir() and not (path / "__init__.py").is_file():
        declared = read(path / "plugin.yaml")
        if declared is None:
            raise PluginLoadError(f"{path}: no plugin.yaml with a manifest, and not a package")
        if declared.runtime == "service":
            return None, declared
        target = path / (declared.entry_point or declared.name)
        for option in (target, target.with_suffix(".py"), target.with_suffix(".so")):
            if option.exists() and is_plugin_file(option):
                return option, declared
        hint = " (run make first)" if declared.runtime == "c" else ""
        raise PluginLoadError(f"{path}: entry_point {target.name} not found{hint}")
    if not path.exists():
        raise PluginLoadError(f"{path}: no such file or directory")
    if not is_plugin_file(path):
        raise PluginLoadError(f"{path}: not a plugin (.py, a package, .so, or a plugin.yaml)")
    candidate = Candidate(name_of(path), path)
    return path, read(candidate.config_file)


def validate_path(path: Path, config: Config) -> int:
    """Print what one plugin is, loaded as a worker would; exit status 0, or 2 if it fails."""
    try:
        plugin_path, declared = plugin_in(path)
        if plugin_path is None:
            assert declared is not None
            print(
                f"ok  {declared.name} {declared.version} ({declared.type}, service): manifest "
                f"valid; Logloom reaches it at plugins.services.{declared.name}.address "
                f"(it listens on {declared.entry_point or 'its own address'} by default)"
            )
            return 0
        loaded = load_candidate(Candidate(name_of(plugin_path), plugin_path), config)
    except PluginLoadError as exc:
        print(f"logloom: {path}: {exc}", file=sys.stderr)
        return 2
    assert loaded is not None  # no type filter was asked for
    try:
        info = loaded.info
        print(
            f"ok  {info.name} {info.version} ({info.type}, {loaded.runtime}) {loaded.origin}; "
            + ("manifest agrees" if declared is not None else "no manifest (plugin.yaml)")
        )
    finally:
        loaded.shutdown()
    return 0


def distribution_name(name: str) -> str:
    """``filter_x`` → ``logloom-plugin-filter-x`` (a full ``logloom-plugin-*`` name stays)."""
    normal = re.sub(r"[-_.]+", "-", name).lower()
    return normal if normal.startswith(DIST_PREFIX) else DIST_PREFIX + normal


def install(name: str, config: Config, pip_args: list[str], signature: Path | None) -> int:
    """pip-install ``logloom-plugin-<name>``; with ``plugins.verify`` on, only a wheel that
    verifies. Exit status: 0, 1 if pip or the check fails."""
    dist = distribution_name(name)
    with tempfile.TemporaryDirectory(prefix="logloom-install-") as scratch:
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        fetched = _pip([*download, "--dest", scratch, dist, *pip_args])
        if fetched is not None:
            print(f"logloom: plugins install: pip could not fetch {dist}: {fetched}",
                  file=sys.stderr)  # fmt: skip
            return 1
        wheels = sorted(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            print(f"logloom: plugins install: no wheel of {dist} was fetched", file=sys.stderr)
            return 1
        wheel = wheels[0]
        try:
            trusted = _check(wheel, config, pip_args, signature)
        except PluginLoadError as exc:
            print(f"logloom: plugins install: {wheel.name}: {exc}; not installed", file=sys.stderr)
            return 1
        installed = _pip([sys.executable, "-m", "pip", "install", str(wheel), *pip_args])
        if installed is not None:
            print(f"logloom: plugins install: pip failed for {wheel.name}: {installed}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if config.plugins.verify == "signature":
            _sign_installed(dist, signing.signature_path(wheel))
        elif config.plugins.verify == "sha256":
            for top, value in signing.wheel_installs(wheel).items():
                print(f"pin it for loading: plugins.pinned_sha256.{top}: {value}")
    names = _plugins_of(dist)
    print(f"installed {wheel.name}{trusted}")
    if names:
        print(f"plugins: {', '.join(names)} (add to plugins.enabled; `logloom validate`)")
    return 0


def _sign_installed(dist: str, wheel_signature: Path) -> None:
    """Put the publisher's signatures of what the wheel installs (``installs`` in its ``.sig``)
    beside each installed package or module, where ``plugins.verify: signature`` looks at load.
    They are the publisher's, over the installed files' digest: nothing is signed here."""
    record = orjson.loads(wheel_signature.read_bytes())
    installs = record.get("installs") or {}
    if not installs:
        print(f"note: {wheel_signature.name} signs the wheel only (signed before this Logloom?): "
              "its plugins need their own .sig to load with plugins.verify: signature")  # fmt: skip
    found = metadata.distribution(dist)
    for top, signed in installs.items():
        target = Path(str(found.locate_file(top)))
        entry = {"file": top, "sha256": signed["sha256"], "signature": signed["signature"],
                 "public_key": record["public_key"], "from": record.get("file")}  # fmt: skip
        signing.signature_path(target).write_bytes(
            orjson.dumps(entry, option=orjson.OPT_INDENT_2) + b"\n"
        )


def _pip(command: list[str]) -> str | None:
    """Run pip; None on success, else its last line of output."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def _check(wheel: Path, config: Config, pip_args: list[str], signature: Path | None) -> str:
    """Apply ``plugins.verify`` to the fetched wheel; what was checked, for the report line."""
    verify = config.plugins.verify
    if verify == "off":
        return ""
    if verify == "sha256":
        signing.verify(wheel, config.plugins)
        return " (sha256 pinned)"
    found = signature or _signature_beside(wheel.name, pip_args)
    if found is None:
        raise PluginLoadError(
            f"not signed: no {wheel.name}{signing.SIGNATURE_SUFFIX} beside it (--find-links) "
            "and no --signature"
        )
    shutil.copyfile(found, signing.signature_path(wheel))
    keys = [Path(key) for key in config.plugins.trusted_keys]
    if not keys:
        raise PluginLoadError("plugins.verify is signature and plugins.trusted_keys is empty")
    return f" (signature verified, key {signing.check_signature(wheel, keys)})"


def _signature_beside(wheel_name: str, pip_args: list[str]) -> Path | None:
    """``<wheel>.sig`` in a local ``--find-links`` directory."""
    places = [value for flag, value in pairwise(pip_args) if flag in ("--find-links", "-f")]
    places += [arg.split("=", 1)[1] for arg in pip_args if arg.startswith("--find-links=")]
    for place in places:
        candidate = Path(place) / (wheel_name + signing.SIGNATURE_SUFFIX)
        if candidate.is_file():
            return candidate
    return None


def _plugins_of(dist: str) -> list[str]:
    """The plugin names an installed distribution registers (as this process now sees them)."""
    try:
        found = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return []
    return sorted(point.name for point in found.entry_points if point.group == ENTRY_POINT_GROUP)
