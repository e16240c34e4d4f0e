"""Signed plugins (design §7.5): refused at load when changed after signing, unsigned or signed
by a key that is not trusted; sha256 pinning as the lighter alternative."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from plugin_kit import LOGLOOM, ROOT, build_bundled

from pipeline import signing
from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.runtimes import is_plugin_file

pytestmark = pytest.mark.plugins


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOGLOOM, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def validate(tmp_path: Path, verify: str, keys: list[Path], **extra: object) -> list[str]:
    """What loading every plugin in tmp_path/plugins under ``verify`` says: the failure lines."""
    names = sorted(p.name.split(".")[0] for p in (tmp_path / "plugins").iterdir()
                   if is_plugin_file(p))  # fmt: skip
    assert names, "something to load"
    config = parse_config(
        {
            "plugins": {
                "enabled": names,
                "paths": [str(tmp_path / "plugins")],
                "verify": verify,
                "trusted_keys": [str(key) for key in keys],
                **extra,
            }
        }
    )
    failures: list[str] = []
    for plugin in load_plugins(config, failures=failures):
        plugin.shutdown()
    return failures


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    """A key pair made with the CLI, and plugins/ with a signed .py and a signed .so."""
    made = cli("plugins", "keygen", "--out", str(tmp_path / "ops"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(ROOT / "plugins/python/log_filter_severity.py", plugins)
    build_bundled(plugins, "filter_severity")
    for plugin in ("log_filter_severity.py", "filter_severity.so"):
        signed = cli("plugins", "sign", "--key", str(tmp_path / "ops.key"), str(plugins / plugin),
                     cwd=tmp_path)  # fmt: skip
        assert signed.returncode == 0, signed.stderr
    return tmp_path / "ops.key", tmp_path / "ops.pub"


def test_signed_plugins_load_and_verify(tmp_path: Path, signed: tuple[Path, Path]) -> None:
    _, public = signed
    assert (tmp_path / "ops.key").stat().st_mode & 0o777 == 0o600
    assert validate(tmp_path, "signature", [public]) == []
    checked = cli("plugins", "verify", "--key", str(public), "plugins/filter_severity.so",
                  cwd=tmp_path)  # fmt: skip
    assert checked.returncode == 0 and "signature ok (key ops.pub)" in checked.stdout


def test_plugins_changed_after_signing_are_refused_at_load(
    tmp_path: Path, signed: tuple[Path, Path], attack_matrix: list[tuple[str, str]]
) -> None:
    _, public = signed
    with open(tmp_path / "plugins/log_filter_severity.py", "a") as py:
        py.write("\nimport os  # injected\n")
    with open(tmp_path / "plugins/filter_severity.so", "r+b") as so:
        so.seek(-16, 2)
        so.write(b"\x90" * 16)
    failures = validate(tmp_path, "signature", [public])
    assert len(failures) == 2
    assert all("changed since it was signed (sha256 " in line for line in failures)
    assert any(line.startswith("Failed to load plugin 'filter_severity.so': ") for line in failures)
    checked = cli("plugins", "verify", "--key", str(public), "plugins/log_filter_severity.py",
                  cwd=tmp_path)  # fmt: skip
    assert checked.returncode == 1 and "changed since it was signed" in checked.stderr
    attack_matrix.append((".py modified after signing", "refused at load: " + failures[1][:50]))
    attack_matrix.append((".so modified after signing", "refused at load: " + failures[0][:50]))


def test_unsigned_or_untrusted_plugins_are_refused(
    tmp_path: Path, signed: tuple[Path, Path]
) -> None:
    assert signed  # both plugins signed with ops.key, which this test does not trust
    (tmp_path / "plugins/log_filter_severity.py.sig").unlink()
    other = signing.keygen(tmp_path / "other")[1]
    failures = validate(tmp_path, "signature", [other])
    assert failures == [
        "Failed to load plugin 'filter_severity.so': signature is not from a trusted key "
        "(plugins.trusted_keys)",
        "Failed to load plugin 'log_filter_severity.py': not signed "
        "(no log_filter_severity.py.sig)",
    ]
    assert validate(tmp_path, "off", []) == [], "verification is opt-in"


def test_pinned_sha256_and_package_digests(tmp_path: Path) -> None:
    package = tmp_path / "plugins" / "filter_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'PLUGIN_INFO = {"name": "filter_pkg", "version": "1.0.0", "type": "filter"}\n'
        "def plugin_init(): return 0\ndef plugin_process(entry): return True\n"
        "def plugin_shutdown(): pass\n"
    )
    pinned = {"filter_pkg": signing.digest(package)}
    assert validate(tmp_path, "sha256", [], pinned_sha256=pinned) == []
    (package / "extra.py").write_text("x = 1\n")  # a file added to the package
    (failure,) = validate(tmp_path, "sha256", [], pinned_sha256=pinned)
    assert "is not the pinned" in failure
    (failure,) = validate(tmp_path, "sha256", [], pinned_sha256={})
    assert failure.endswith("no pinned sha256 for filter_pkg (plugins.pinned_sha256)")
