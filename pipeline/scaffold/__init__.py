"""``logloom create-plugin``: a new plugin project with working tests (design §5.5.8, §9.2).

The project is one directory named after the plugin, laid out as design §9.2 says: for Python
the directory *is* the package (``__init__.py``, ``plugin.yaml``, ``requirements.txt``,
``README.md``, ``tests/test_plugin.py``) with a ``pyproject.toml`` that builds it into a wheel
registering it under the ``logloom.plugins`` entry point; for C the source, a ``Makefile`` using
``logloom plugins cflags`` and the same files around it; for a service a standalone JSON-RPC
server (``service.py``) around the same logic as the Python template, with its ``Dockerfile``
(design §9.4). The templates are package data under ``templates/``; every generated test asserts
what the example logic does, so it fails once the logic is changed and not the tests.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from pipeline.errors import LogloomError
from pipeline.manifest import NAME_PREFIXES
from pipeline.plugin import PLUGIN_TYPES

LANGS = ("python", "c", "service")
NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_NAME = 64


class ScaffoldError(LogloomError):
    """The plugin cannot be created as asked; the message says why (exit 2)."""


@dataclass(frozen=True)
class Kind:
    description: str
    capabilities: list[str]
    config: dict[str, object]


KINDS = {
    "filter": Kind(
        "drops the entries whose message contains drop_text", ["text"], {"drop_text": "healthcheck"}
    ),
    "sink": Kind("appends each entry to a JSON-lines file", ["json", "batch"], {"path": ""}),
    "ai": Kind(
        "alerts when entries at alerting levels pile up",
        ["analysis"],
        {"threshold": 3, "levels": ["ERROR", "FATAL"]},
    ),
    "lang": Kind(
        "gives the texts of lang keys from its messages",
        ["i18n"],
        {
            "messages": {
                "en": {"app.started": "Application {name} started"},
                "zh": {"app.started": "应用 {name} 已启动"},
            }
        },
    ),
}

# What each language's project holds: (template, file in the project); ``{type}`` is the type.
FILES = {
    "python": [
        ("python/{type}.py.tmpl", "__init__.py"),
        ("python/plugin.yaml.tmpl", "plugin.yaml"),
        ("python/pyproject.toml.tmpl", "pyproject.toml"),
        ("python/requirements.txt.tmpl", "requirements.txt"),
        ("python/README.md.tmpl", "README.md"),
        ("python/conftest.py.tmpl", "tests/conftest.py"),
        ("python/test_{type}.py.tmpl", "tests/test_plugin.py"),
    ],
    "c": [
        ("c/{type}.c.tmpl", "{name}.c"),
        ("c/plugin_config.h.tmpl", "plugin_config.h"),
        ("c/Makefile.tmpl", "Makefile"),
        ("c/plugin.yaml.tmpl", "plugin.yaml"),
        ("python/README.md.tmpl", "README.md"),
        ("c/conftest.py.tmpl", "tests/conftest.py"),
        ("c/test_{type}.py.tmpl", "tests/test_plugin.py"),
    ],
    "service": [
        ("python/{type}.py.tmpl", "plugin.py"),
        ("service/service.py.tmpl", "service.py"),
        ("service/Dockerfile.tmpl", "Dockerfile"),
        ("service/plugin.yaml.tmpl", "plugin.yaml"),
        ("python/requirements.txt.tmpl", "requirements.txt"),
        ("python/README.md.tmpl", "README.md"),
        ("service/conftest.py.tmpl", "tests/conftest.py"),
        ("service/test_{type}.py.tmpl", "tests/test_plugin.py"),
    ],
}

NOTES = {
    "__init__.py": "the plugin: `PLUGIN_INFO` and its functions",
    "{name}.c": "the plugin: the functions of `logloom_plugin.h`",
    "plugin.py": "the plugin's logic: `PLUGIN_INFO` and its functions",
    "service.py": "the service: JSON-RPC 2.0 lines on a socket around `plugin.py`",
    "Dockerfile": "the service as a container",
    "plugin_config.h": "reads string settings from the config JSON",
    "Makefile": "`make` builds `{name}.so`",
    "plugin.yaml": "the manifest (`manifest:`) and the plugin's config (every other key)",
    "pyproject.toml": "builds the wheel; the `logloom.plugins` entry point",
    "requirements.txt": "what it needs at run time",
    "README.md": "this file",
    "tests/conftest.py": "what the tests share",
    "tests/test_plugin.py": "what the plugin must do; run `python -m pytest`",
}

DEVELOP = {
    lang: "\n".join(f"{command:<51} # {why}" for command, why in steps)
    for lang, steps in {
        "python": [
            ("python -m pytest", "the tests"),
            ("mypy --strict __init__.py tests", "the types (pipeline.plugin_api)"),
            ("logloom plugins validate .", "manifest and code, loaded as workers do"),
            ("pip wheel --no-deps --no-build-isolation -w dist .", "the wheel"),
        ],
        "c": [
            ("make", "builds {name}.so (logloom plugins cflags)"),
            ("python -m pytest", "the tests (they run make first)"),
            ("logloom plugins validate .", "manifest and plugin_info(), loaded"),
        ],
        "service": [
            ("python -m pytest", "starts service.py and calls it"),
            ("python service.py --unix /tmp/{name}.sock", "run it"),
            ("docker build -t {name} .", "or as a container (Dockerfile)"),
        ],
    }.items()
}

USE = {
    "python": "Install the wheel where Logloom runs (`pip install dist/*.whl`, or publish it as "
    "`{dist}` and `logloom plugins install {name}`): Logloom finds it through its "
    "`logloom.plugins` entry point, and `logloom plugins list` shows the distribution it came "
    "from. Or copy this directory into one of `plugins.paths`.",
    "c": "Run `make`, then put this directory in `plugins.paths` (Logloom finds `{name}.so` and "
    "reads `plugin.yaml` beside it), or copy both files into one of them.",
    "service": "Start it (`python service.py --tcp 0.0.0.0:7400`, or the container), then tell "
    'Logloom where it is: `plugins.services.{name}: {{address: "tcp://HOST:7400", type: {type}}}`.',
}


def check_name(kind: str, name: str) -> None:
    """Design §9.2: the type in the name — ``filter_*`` as §9.2 writes it, and as a word
    elsewhere too, so ``my_filter`` (design §5.5.8's own example) and ``log_filter_severity``
    (a bundled one) pass; a plain lower-case identifier, so it is also the module, library
    and entry-point name."""
    prefix = NAME_PREFIXES[kind]
    if name == prefix or kind not in name.split("_") or name.split("_") == [kind]:
        stem = name.removesuffix(f"_{kind}").removeprefix(prefix) or "mine"
        raise ScaffoldError(
            f"plugin name {name!r}: a {kind} plugin's name has '{kind}' as a word, best as "
            f"its prefix (design §9.2), e.g. '{prefix}{stem}'"
        )
    if not NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise ScaffoldError(
            f"plugin name {name!r}: lower-case letters, digits and '_' only, starting with a "
            f"letter, at most {MAX_NAME} characters"
        )


def create(kind: str, name: str, lang: str = "python", parent: Path = Path(".")) -> Path:
    """Write the project ``parent/name`` and return its path; ScaffoldError if it cannot."""
    if kind not in PLUGIN_TYPES:
        raise ScaffoldError(f"--type {kind!r}: one of {', '.join(PLUGIN_TYPES)}")
    if lang not in LANGS:
        raise ScaffoldError(f"--lang {lang!r}: one of {', '.join(LANGS)}")
    check_name(kind, name)
    if lang == "c" and kind == "ai":
        raise ScaffoldError(
            "--type ai --lang c: the C ABI answers an int per entry and an ai plugin answers a "
            "JSON object; write it in python, or as a service"
        )
    target = parent / name
    if target.exists() or target.is_symlink():
        raise ScaffoldError(f"{target} exists; not overwriting it (choose another --dir or name)")
    values = _values(kind, name, lang)
    rendered = {
        out.format(name=name): _render(template.format(type=kind), values)
        for template, out in FILES[lang]
    }
    parent.mkdir(parents=True, exist_ok=True)
    target.mkdir()  # fails if it appeared meanwhile: never overwrite
    (target / "tests").mkdir()
    for relative, text in rendered.items():
        (target / relative).write_text(text, encoding="utf-8")
    if lang == "python":
        (target / "py.typed").write_text("")
    if lang == "service":
        (target / "service.py").chmod(0o755)
    return target


def _values(kind: str, name: str, lang: str) -> dict[str, str]:
    spec = KINDS[kind]
    config = dict(spec.config)
    if kind == "sink":
        config["path"] = f"{name}.jsonl"
    if lang == "c" and kind == "lang":
        config = {}  # the C example keeps its texts in a table
    dist = "logloom-plugin-" + name.replace("_", "-")
    short = name.replace("_", "-")
    files = [
        f"| `{out.format(name=name)}` | {NOTES[out].format(name=name)} |" for _, out in FILES[lang]
    ]
    config_text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False) if config else ""
    return {
        "name": name,
        "type": kind,
        "lang": {"python": "Python", "c": "C", "service": "a service"}[lang],
        "dist": dist,
        "author": _author(),
        "description": spec.description,
        "capabilities": "[" + ", ".join(spec.capabilities) + "]",
        "config": ("# The plugin's config:\n" + config_text) if config_text else "",
        "files": "\n".join(files),
        "develop": DEVELOP[lang].format(name=name),
        "use": USE[lang].format(name=name, dist=dist, short=short, type=kind),
    }


def _author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"


def _render(template: str, values: dict[str, str]) -> str:
    text = resources.files(__package__).joinpath("templates", template).read_text("utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text
