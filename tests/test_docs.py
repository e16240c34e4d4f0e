"""Every code block of docs/plugins.md runs, in order, in one directory, as a reader would.

The fence's language says how: ``python`` is executed (its ``test_*`` functions called), ``sh``
runs under bash with the venv's ``logloom`` on PATH and must exit 0, ``c`` is compiled against
the shipped header, ``yaml`` is parsed (and a Logloom config loaded, unknown keys failing),
``json`` parsed; ``text`` is output, shown and not run. ``file=NAME`` after the
language saves the block as that file first, for the blocks after it.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import yaml
from plugin_kit import ROOT, cflags

from pipeline.config import load_config

GUIDE = ROOT / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
LANGUAGES = {"python", "sh", "c", "yaml", "json", "text"}


@dataclass(frozen=True)
class Block:
    language: str
    file: str | None
    code: str
    line: int


def blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        attributes = dict(part.split("=", 1) for part in match.group(2).split() if "=" in part)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match.group(1), attributes.get("file"), match.group(3), line))
    return found


BLOCKS = blocks(GUIDE.read_text())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guide")


def test_every_block_has_a_language_the_test_knows() -> None:
    unknown = [(block.line, block.language) for block in BLOCKS if block.language not in LANGUAGES]
    assert unknown == [], "tag each block with one of " + ", ".join(sorted(LANGUAGES))
    assert len([block for block in BLOCKS if block.language == "sh"]) >= 10


@pytest.mark.parametrize(
    "block", BLOCKS, ids=[f"line {block.line} {block.language}" for block in BLOCKS]
)
def test_block(block: Block, workspace: Path) -> None:
    if block.file is not None:
        (workspace / block.file).write_text(block.code)
    run = {"python": run_python, "sh": run_sh, "c": compile_c, "yaml": load_yaml}.get(
        block.language
    )
    if run is not None:
        run(block, workspace)
    elif block.language == "json":
        orjson.loads(block.code)


def run_python(block: Block, workspace: Path) -> None:
    path = workspace / (block.file or f"block_{block.line}.py")
    path.write_text(block.code)
    before = set(sys.modules)
    sys.path.insert(0, str(workspace))
    cwd = Path.cwd()
    os.chdir(workspace)
    try:
        namespace = runpy.run_path(str(path), run_name=f"guide_{path.stem}")
        for name, function in namespace.items():
            if name.startswith("test_") and callable(function):
                function()
    finally:
        os.chdir(cwd)
        sys.path.remove(str(workspace))
        for module in set(sys.modules) - before:
            if getattr(sys.modules[module], "__file__", "") and str(workspace) in str(
                sys.modules[module].__file__
            ):
                del sys.modules[module]


def run_sh(block: Block, workspace: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # An editable install is invisible to mypy; an installed wheel is found by its py.typed.
        "MYPYPATH": str(ROOT),
    }
    env.pop("LOG_LEVEL", None)
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.code],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"docs/plugins.md:{block.line}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    )


def compile_c(block: Block, workspace: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "no C compiler (cc) on PATH"
    source = workspace / (block.file or f"block_{block.line}.c")
    source.write_text(block.code)
    result = subprocess.run(
        [compiler, *cflags(), "-fsyntax-only", "-Wall", "-Wextra", "-Werror", str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"docs/plugins.md:{block.line}:\n{result.stderr}"


def load_yaml(block: Block, workspace: Path) -> None:
    data = yaml.safe_load(block.code)
    if isinstance(data, dict) and "plugins" in data and block.file is None:
        config = workspace / f"config_{block.line}.yaml"
        config.write_text(block.code)
        load_config(str(config))  # unknown keys and wrong types are errors
