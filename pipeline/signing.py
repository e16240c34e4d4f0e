"""Plugin signatures (design §7.5): a plugin file changed after it was signed is not loaded.

A signature is a detached file beside the plugin, ``<file>.sig``: JSON holding the SHA-256 of
the plugin and an Ed25519 signature over that digest, with the signer's public key. With
``plugins.verify: signature`` a plugin loads only if its ``.sig`` verifies under one of
``plugins.trusted_keys`` and the file still has the digest that was signed; with
``plugins.verify: sha256`` only if its digest is pinned in ``plugins.pinned_sha256``. A package
plugin (a directory) is digested over all its files, names included, so no file can be added,
removed or changed unnoticed. A signed wheel's ``.sig`` also signs, under ``installs``, the
digest each package or module in it will have once installed, so ``logloom plugins install``
can check the wheel before installing it and put the publisher's signature beside what it
installed, where the check at load looks.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path, PurePosixPath

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.config import PluginsConfig
from pipeline.errors import PluginLoadError

SIGNATURE_SUFFIX = ".sig"


def digest(path: Path) -> str:
    """The SHA-256 of a plugin file, or of every file of a plugin package (with their names)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    whole = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        whole.update(file.relative_to(path).as_posix().encode() + b"\0")
        whole.update(hashlib.sha256(file.read_bytes()).digest())
    return whole.hexdigest()


def wheel_installs(wheel: Path) -> dict[str, str]:
    """What a wheel installs at the top of site-packages (package directories, module files),
    each with the :func:`digest` it has once installed, read from the wheel itself."""
    files: dict[str, list[tuple[PurePosixPath, bytes]]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            path = PurePosixPath(name)
            top = path.parts[0]
            if name.endswith("/") or top.endswith((".dist-info", ".data")):
                continue
            if "__pycache__" in path.parts:
                continue
            files.setdefault(top, []).append((path, archive.read(name)))
    installs: dict[str, str] = {}
    for top, members in files.items():
        if members == [(PurePosixPath(top), members[0][1])]:  # a module file
            installs[top] = hashlib.sha256(members[0][1]).hexdigest()
            continue
        whole = hashlib.sha256()
        for path, data in sorted(members, key=lambda member: member[0]):
            whole.update(path.relative_to(top).as_posix().encode() + b"\0")
            whole.update(hashlib.sha256(data).digest())
        installs[top] = whole.hexdigest()
    return installs


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def keygen(prefix: Path) -> tuple[Path, Path]:
    """``<prefix>.key`` (private, mode 0600) and ``<prefix>.pub``; refuses to overwrite."""
    private_path, public_path = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    for existing in (private_path, public_path):
        if existing.exists():
            raise FileExistsError(f"{existing} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(private)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def sign(key_path: Path, plugin: Path) -> Path:
    """Write ``<plugin>.sig``: the plugin's SHA-256, signed with the private key."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise PluginLoadError(f"{key_path} is not an Ed25519 private key")
    sha256 = digest(plugin)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    record: dict[str, object] = {
        "file": plugin.name,
        "sha256": sha256,
        "signature": base64.b64encode(key.sign(bytes.fromhex(sha256))).decode(),
        "public_key": base64.b64encode(public).decode(),
    }
    if plugin.suffix == ".whl":  # also what it installs, for `plugins install` to sign beside it
        record["installs"] = {
            top: {"sha256": value, "signature": base64.b64encode(key.sign(bytes.fromhex(value)))
                  .decode()}
            for top, value in wheel_installs(plugin).items()
        }  # fmt: skip
    target = signature_path(plugin)
    target.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")
    return target


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise PluginLoadError(f"{path} is not an Ed25519 public key")
    return key


def check_signature(plugin: Path, trusted_keys: list[Path]) -> str:
    """Raise PluginLoadError unless ``plugin`` is signed by a trusted key and unchanged since;
    the name of the key file that signed it."""
    sig_path = signature_path(plugin)
    if not sig_path.is_file():
        raise PluginLoadError(f"not signed (no {sig_path.name})")
    try:
        record = orjson.loads(sig_path.read_bytes())
        signed_digest, signature = record["sha256"], base64.b64decode(record["signature"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise PluginLoadError(f"{sig_path.name} is not a Logloom signature") from None
    now = digest(plugin)
    if now != signed_digest:
        raise PluginLoadError(
            f"changed since it was signed (sha256 {now[:16]}…, signed {str(signed_digest)[:16]}…)"
        )
    for key_path in trusted_keys:
        try:
            load_public_key(key_path).verify(signature, bytes.fromhex(signed_digest))
        except InvalidSignature:
            continue
        return key_path.name
    raise PluginLoadError("signature is not from a trusted key (plugins.trusted_keys)")


def verify(plugin: Path, plugins: PluginsConfig) -> None:
    """Apply ``plugins.verify`` to a plugin file before it is loaded; PluginLoadError if refused."""
    if plugins.verify == "off":
        return
    if plugins.verify == "sha256":
        pinned = plugins.pinned_sha256.get(plugin.name)
        if pinned is None:
            raise PluginLoadError(f"no pinned sha256 for {plugin.name} (plugins.pinned_sha256)")
        now = digest(plugin)
        if now != pinned.lower():
            raise PluginLoadError(f"sha256 {now[:16]}… is not the pinned {pinned[:16]}…")
        return
    check_signature(plugin, [Path(key) for key in plugins.trusted_keys])
