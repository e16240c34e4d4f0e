"""``logloom create-plugin`` (issue 9 part 1): every type in every language, its generated tests
run as a developer runs them, and the same tests run again with the example logic broken.

The projects are made once per module and their tests run in one pytest process each way
(``--import-mode=importlib``: every project has its own ``tests/test_plugin.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipeline import cli, scaffold

ROOT = Path(__file__).resolve().parent.parent
LOGLOOM = [sys.executable, "-m", "pipeline.cli"]
PROJECTS = [
    (lang, kind)
    for lang in scaffold.LANGS
    for kind in ("filter", "sink", "ai", "lang")
    if (lang, kind) != ("c", "ai")
]
LOGIC_FILE = {"python": "__init__.py", "c": "{name}.c", "service": "plugin.py"}
PYTHON_BREAKS = {
    "filter": ('return str(settings["drop_text"]) not in message', "return True"),
    "sink": ('out.write(json.dumps(dict(entry), ensure_ascii=False) + "\\n")', "pass"),
    "ai": ('if state["seen"] < threshold:', 'if state["seen"] <= threshold:'),
    "lang": ("return text if isinstance(text, str) else None", "return None"),
}
# One plausible mistake in each example's logic: the generated tests must catch it.
BREAKS = {
    **{("python", kind): change for kind, change in PYTHON_BREAKS.items()},
    **{("service", kind): change for kind, change in PYTHON_BREAKS.items()},
    ("c", "filter"): ("return strstr(message, drop_text) == NULL;", "return 1;"),
    ("c", "sink"): ("if (fputs(entry->json, out) < 0 || fputc('\\n', out) == EOF) return -1;", ""),
    ("c", "lang"): ("return TEXTS[i].text;", 'return "";'),
}


def name_of(lang: str, kind: str) -> str:
    return f"{kind}_made_{lang}"


def clean_env() -> dict[str, str]:
    drop = ("LOGLOOM_CONFIG", "LOGLOOM_REDIS_URL", "REDIS_URL", "PYTEST_ADDOPTS")
    return {key: value for key, value in os.environ.items() if key not in drop}


def run_generated_tests(base: Path) -> dict[str, dict[str, int]]:
    """Run every project's tests under ``base`` in one pytest; passed/failed counts per project."""
    report = base / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--import-mode=importlib", f"--rootdir={base}", f"--junitxml={report}",
               *(str(base / lang) for lang in scaffold.LANGS)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=base, env=clean_env(),
                          timeout=120)  # fmt: skip
    assert report.is_file(), done.stdout + done.stderr
    counts: dict[str, dict[str, int]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        classname = case.get("classname", "")
        project = next(
            (n for lang, kind in PROJECTS if (n := name_of(lang, kind)) in classname), ""
        )
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None \
            else "passed"  # fmt: skip
        counts.setdefault(project, {"passed": 0, "failed": 0})[outcome] += 1
    return counts


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("scaffolds")
    for lang, kind in PROJECTS:
        made = scaffold.create(kind, name_of(lang, kind), lang, base / lang)
        assert made == base / lang / name_of(lang, kind)
    return base


def test_every_type_in_every_language_has_the_design_layout(projects: Path) -> None:
    common = {"plugin.yaml", "README.md", "tests/test_plugin.py"}
    for lang, kind in PROJECTS:
        project = projects / lang / name_of(lang, kind)
        files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
        expected = (
            common
            | {
                "python": {"__init__.py", "requirements.txt", "pyproject.toml", "py.typed"},
                "c": {f"{name_of(lang, kind)}.c", "Makefile", "plugin_config.h"},
                "service": {"plugin.py", "service.py", "Dockerfile", "requirements.txt"},
            }[lang]
        )
        assert expected <= files, (lang, kind, files)
        assert not any("{{" in (project / f).read_text() for f in files), (lang, kind)
    pyproject = (projects / "python" / "filter_made_python" / "pyproject.toml").read_text()
    assert 'name = "logloom-plugin-filter-made-python"' in pyproject
    assert '[project.entry-points."logloom.plugins"]\nfilter_made_python = ' in pyproject
    makefile = (projects / "c" / "sink_made_c" / "Makefile").read_text()
    assert "$(LOGLOOM) plugins cflags" in makefile
    dockerfile = (projects / "service" / "ai_made_service" / "Dockerfile").read_text()
    assert dockerfile.startswith("# ai_made_service") and "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["python", "service.py", "--tcp", "0.0.0.0:7400"]' in dockerfile


def test_generated_tests_pass_as_generated_and_fail_with_the_logic_broken(
    projects: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(projects, tmp_path / "broken", ignore=shutil.ignore_patterns("*.so"))
    for (lang, kind), (old, new) in BREAKS.items():
        logic = (
            broken / lang / name_of(lang, kind) / LOGIC_FILE[lang].format(name=name_of(lang, kind))
        )
        source = logic.read_text()
        assert source.count(old) == 1, (lang, kind, old)
        logic.write_text(source.replace(old, new))

    as_generated = run_generated_tests(projects)
    for lang, kind in PROJECTS:
        counts = as_generated.get(name_of(lang, kind), {})
        assert counts.get("passed", 0) >= 1 and counts.get("failed") == 0, (lang, kind, counts)

    with_broken_logic = run_generated_tests(broken)
    for lang, kind in PROJECTS:
        counts = with_broken_logic.get(name_of(lang, kind), {})
        assert counts.get("failed", 0) >= 1, f"{lang} {kind}: its tests missed the broken logic"


def test_python_scaffolds_type_check_under_mypy_strict(projects: Path) -> None:
    # One mypy run for the four projects: --explicit-package-bases names each tests module
    # after its project, and MYPYPATH finds Logloom (installed editable here) and the plugins.
    python = projects / "python"
    env = {**clean_env(), "MYPYPATH": f"{ROOT}{os.pathsep}{python}"}
    files = [str(p.relative_to(python)) for p in sorted(python.glob("*/__init__.py"))]
    files += [str(p.relative_to(python)) for p in sorted(python.glob("*/tests/*.py"))]
    assert len(files) == 12
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--explicit-package-bases",
         *files],
        cwd=python, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues found in 12 source files" in done.stdout


def test_c_scaffold_builds_with_make_into_a_library_validate_accepts(
    projects: Path, tmp_path: Path
) -> None:
    project = shutil.copytree(projects / "c" / "filter_made_c", tmp_path / "filter_made_c")
    (project / "filter_made_c.so").unlink(missing_ok=True)
    logloom = " ".join(LOGLOOM)
    subprocess.run(["make", "-s", "-C", str(project), f"LOGLOOM={logloom}"], check=True)
    assert (project / "filter_made_c.so").is_file()
    done = subprocess.run([*LOGLOOM, "plugins", "validate", str(project)], capture_output=True,
                          text=True, cwd=tmp_path, env=clean_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok  filter_made_c 0.1.0 (filter, c) ")
    assert "manifest agrees" in done.stdout


def test_create_plugin_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["create-plugin", "--type", "filter", "--name", "filter_cli", "--dir", str(tmp_path)]
    assert cli.main(args) == 0
    assert (tmp_path / "filter_cli" / "__init__.py").is_file()
    assert "created" in capsys.readouterr().out
    (tmp_path / "filter_cli" / "__init__.py").write_text("# mine\n")

    assert cli.main(args) == 2, "an existing directory is never overwritten"
    assert "exists; not overwriting it" in capsys.readouterr().err
    assert (tmp_path / "filter_cli" / "__init__.py").read_text() == "# mine\n"
    assert cli.main(["plugins", "validate", str(tmp_path / "service_x")]) == 2


@pytest.mark.parametrize(
    ("kind", "name", "lang", "error"),
    [
        ("filter", "my_plugin", "python", "a filter plugin's name has 'filter' as a word"),
        ("sink", "filter_x", "python", "a sink plugin's name has 'sink' as a word"),
        ("lang", "lang_", "python", "has 'lang' as a word"),
        ("ai", "ai_Summary", "python", "lower-case letters, digits and '_' only"),
        ("ai", "ai-summary", "service", "has 'ai' as a word"),
        ("filter", "filter_x/../y", "python", "lower-case letters"),
        ("ai", "ai_native", "c", "the C ABI answers an int per entry"),
    ],
)
def test_refused_names(
    kind: str, name: str, lang: str, error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["create-plugin", "--type", kind, "--name", name, "--lang", lang, "--dir", str(tmp_path)]
    assert cli.main(args) == 2
    assert error in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
