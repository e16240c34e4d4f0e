"""Building blocks for plugin runtime tests: C plugins compiled here, services started here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOGLOOM = [sys.executable, "-m", "pipeline.cli"]

C_PRELUDE = """\
#include "logloom_plugin.h"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int plugin_init(void) { return 0; }
void plugin_shutdown(void) {}
"""


def cflags() -> list[str]:
    """What ``logloom plugins cflags`` prints: the real command, as a plugin author runs it."""
    out = subprocess.run(
        [*LOGLOOM, "plugins", "cflags"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.split()


def compile_c(directory: Path, file_name: str, source: str, prelude: bool = True) -> Path:
    """Build ``directory/file_name`` (a ``.so``) from C source with the machine's compiler."""
    directory.mkdir(parents=True, exist_ok=True)
    source_path = directory / (Path(file_name).stem + ".c")
    source_path.write_text((C_PRELUDE if prelude else "") + textwrap.dedent(source))
    return build(source_path, directory / file_name)


def build(source: Path, target: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler (cc) on PATH")
    subprocess.run(
        [compiler, *cflags(), "-shared", "-fPIC", "-O1", "-Wall", "-o", target, source],
        check=True,
    )
    return target


def build_bundled(directory: Path, name: str) -> Path:
    """One bundled C plugin from plugins/c, built into ``directory`` as ``<name>.so``."""
    directory.mkdir(parents=True, exist_ok=True)
    built = build(ROOT / "plugins" / "c" / f"{name}.c", directory / f"{name}.so")
    shutil.copy(ROOT / "plugins" / "c" / f"{name}.yaml", directory / f"{name}.yaml")
    return built


def start_service(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a service plugin and wait for its ``listening on`` line."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        pytest.fail(f"{command} did not start: {line!r}")
    return process


def python_service(socket_path: Path, **env: str) -> subprocess.Popen[str]:
    script = ROOT / "plugins" / "services" / "severity_service.py"
    return start_service([sys.executable, str(script), "--unix", str(socket_path)], env)


def node_service(socket_path: Path, **env: str) -> subprocess.Popen[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; the Node.js service plugin needs it")
    script = ROOT / "plugins" / "services" / "severity_service.js"
    return start_service([node, str(script), "--unix", str(socket_path)], env)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()
