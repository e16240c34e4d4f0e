"""Redis over TLS with an ACL user: every component connects, no password is ever shown.

A private ``redis-server`` listens on a TLS port only (``port 0``), wants a client certificate
(``tls-auth-clients yes``) and knows one user, ``alice``; the default user is off. The CA, the
server's and the client's certificates are made by the test with ``cryptography``. The password
has characters a URL must percent-encode, so both spellings are looked for in every output.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import free_port, wait_for

from pipeline.config import load_config, parse_config, with_tls
from pipeline.errors import ConfigError
from pipeline.keys import Keys
from pipeline.log import redact, redact_url

USER = "alice"
PASSWORD = "s3cret-p@ss:w/rd+Tr0ub4dor"
WRONG_PASSWORD = "not-the-Passw0rd-at-all"
KEYS = Keys()
FAST = {
    "stages": {"block_ms": 100, "claim_idle_ms": 1500, "claim_interval_s": 0.5},
    "sink": {"flush_interval_ms": 200, "batch_size": 200},
}


def secrets(*passwords: str) -> list[str]:
    """Each password as written and as percent-encoded in a URL."""
    return [form for p in passwords for form in (p, quote(p, safe=""))]


def assert_no_password(text: str, *passwords: str) -> None:
    for secret in secrets(PASSWORD, *passwords):
        assert secret not in text, f"a password leaked: ...{text[-2000:]}"


# --- certificates -------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return key


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5)}
    valid["not_valid_after"] = now + datetime.timedelta(days=1)
    ca_key = _key(directory / "ca.key")
    signs_certificates = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    ca_cert = (
        x509.CertificateBuilder(**valid)
        .subject_name(_name("logloom test CA"))
        .issuer_name(_name("logloom test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(signs_certificates, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> None:
        key = _key(directory / f"{name}.key")
        builder = (
            x509.CertificateBuilder(**valid)
            .subject_name(_name(name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    issue(
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    issue("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


# --- the TLS + ACL redis-server -------------------------------------------------------------


@dataclass
class SecureRedis:
    pki: Pki
    port: int

    def url(self, password: str = PASSWORD, user: str = USER, query: str = "") -> str:
        """rediss://alice:<password>@127.0.0.1:<port>/0, the password percent-encoded."""
        url = f"rediss://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/0"
        return f"{url}?{query}" if query else url

    def tls_query(self) -> str:
        return (
            f"ssl_cert_reqs=required&ssl_ca_certs={self.pki.ca}"
            f"&ssl_certfile={self.pki.client_cert}&ssl_keyfile={self.pki.client_key}"
        )

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(query=self.tls_query()))


def _tls_capable(binary: str) -> bool:
    """A redis-server built without TLS refuses the tls-port directive ("Bad directive")."""
    try:
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return True  # it started listening, so it knew the directive
    return "Bad directive" not in probe.stdout + probe.stderr


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH (apt-get install redis-server)")
    if not _tls_capable(binary):
        pytest.skip(f"{binary} was built without TLS support (BUILD_TLS=yes)")
    directory = tmp_path_factory.mktemp("secure-redis")
    pki = make_pki(directory)
    port = free_port()
    conf = directory / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                "port 0",
                f"tls-port {port}",
                f"tls-cert-file {pki.server_cert}",
                f"tls-key-file {pki.server_key}",
                f"tls-ca-cert-file {pki.ca}",
                "tls-auth-clients yes",
                'save ""',
                "appendonly no",
                f"dir {directory}",
                f"logfile {directory / 'redis.log'}",
                "user default off",
                f"user {USER} on >{PASSWORD} ~* &* +@all",
                "",
            ]
        )
    )
    process = subprocess.Popen([binary, str(conf)])
    server = SecureRedis(pki, port)
    client = server.client()
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                log = (directory / "redis.log").read_text(errors="replace")
                pytest.fail(f"the TLS redis-server did not start: {log[-1000:]}")
            time.sleep(0.05)
    client.close()
    yield server
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def secure(secure_redis: SecureRedis) -> Iterator[SecureRedis]:
    """The TLS server, emptied for this test."""
    with secure_redis.client() as client:
        client.flushall()
    yield secure_redis


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOGLOOM_REDIS_URL", "REDIS_URL")}
    return {**env, **extra}


def write_config(
    tmp_path: Path, server: SecureRedis, out: Path, name: str = "logloom.yaml", **sections: Any
) -> Path:
    """The URL carries user and password; the TLS files are the ``redis.tls`` keys."""
    data: dict[str, Any] = {
        "redis": {
            "url": server.url(),
            "embedded": "never",
            "data_dir": str(tmp_path / "data"),
            "tls": {
                "ca_file": str(server.pki.ca),
                "cert_file": str(server.pki.client_cert),
                "key_file": str(server.pki.client_key),
            },
        },
        **FAST,
        "plugins": {
            "paths": [str(tmp_path / "plugins")],
            "enabled": ["log_filter_severity", "sink_jsonl"],
            "config": {"sink_jsonl": {"path": str(out)}},
        },
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "plugins").mkdir(exist_ok=True)
    return path


def run_cli(
    config: Path | None,
    *args: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pipeline.cli"]
    command += ["--config", str(config)] if config else []
    return subprocess.run(
        [*command, *args],
        input=stdin,
        text=True,
        capture_output=True,
        timeout=60,
        env=env or clean_env(),
        cwd=cwd or (config.parent if config else None),
    )


def jsonl(entries: range) -> str:
    return "".join(
        orjson.dumps(
            {"level": "DEBUG" if n % 4 == 0 else "ERROR", "module": "AUTH", "message": f"m{n}",
             "seq": n}
        ).decode()
        + "\n"
        for n in entries
    )  # fmt: skip


def delivered(out: Path) -> set[int]:
    if not out.exists():
        return set()
    data = out.read_bytes()
    return {orjson.loads(line)["seq"] for line in data[: data.rfind(b"\n") + 1].splitlines()}


# --- redaction, without a server ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://alice:s3cret@h:1/0", "rediss://alice:***@h:1/0"),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        (
            "rediss://alice:p%40ss%3Aw%2Frd@h:6380/0?ssl_ca_certs=/etc/ca.crt",
            "rediss://alice:***@h:6380/0?ssl_ca_certs=/etc/ca.crt",
        ),
        ("redis://h:1/0?password=s3cret&db=1", "redis://h:1/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        ("redis://alice@h:1/0", "redis://alice@h:1/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (None, "None"),
    ],
)
def test_redact_url_masks_the_password_and_keeps_the_rest(url: str | None, shown: str) -> None:
    assert redact_url(url) == shown


def test_configured_passwords_are_masked_in_any_text(tmp_path: Path) -> None:
    url = f"rediss://alice:{quote(PASSWORD, safe='')}@h:6380/0"
    parse_config({"redis": {"url": url}})
    for secret in secrets(PASSWORD):
        assert redact(f"error: {secret}!") == "error: ***!"


def test_tls_keys_are_validated_and_become_url_arguments(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    config = parse_config(
        {"redis": {"url": "rediss://alice:pw@h:6380/0", "tls": {"ca_file": str(ca)}}}
    )
    assert with_tls(config.redis.url or "", config.redis.tls) == (
        f"rediss://alice:pw@h:6380/0?ssl_ca_certs={ca}"
    )
    own = "rediss://h:6380/0?ssl_ca_certs=/mine.crt"
    assert with_tls(own, config.redis.tls) == own, "what the URL says wins"
    assert with_tls("redis://h:6379/0", config.redis.tls) == "redis://h:6379/0"

    with pytest.raises(ConfigError, match=r"redis\.tls\.ca_file: no such file"):
        parse_config({"redis": {"tls": {"ca_file": str(tmp_path / "missing.crt")}}})
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        parse_config({"redis": {"tls": {"cert_file": str(ca)}}})
    with pytest.raises(ConfigError, match=r"redis\.tls\.verify: unknown key"):
        parse_config({"redis": {"tls": {"verify": True}}})
    path = tmp_path / "logloom.yaml"
    path.write_text(
        yaml.safe_dump(
            {"redis": {"url": f"redis://:{WRONG_PASSWORD}@h/0", "tls": {"ca_file": str(ca)}}}
        )
    )
    with pytest.raises(ConfigError, match="is not rediss://") as raised:
        load_config(path)
    assert_no_password(str(raised.value), WRONG_PASSWORD)
    path.write_text(yaml.safe_dump({"redis": {"url": f"http://u:{WRONG_PASSWORD}@h/0"}}))
    with pytest.raises(ConfigError, match=r"redis\.url: expected redis://") as raised:
        load_config(path)
    assert_no_password(str(raised.value), WRONG_PASSWORD)


# --- the real components against the TLS + ACL server --------------------------------------


@pytest.mark.slow
def test_workers_produce_and_status_over_tls_with_an_acl_user(
    secure: SecureRedis, tmp_path: Path, workers: Any
) -> None:
    out = tmp_path / "out.jsonl"
    config = write_config(tmp_path, secure, out)
    produced = run_cli(config, "produce", stdin=jsonl(range(200)))
    assert produced.returncode == 0, produced.stderr
    assert_no_password(produced.stdout + produced.stderr)

    workers.start(config, "filter")
    workers.start(config, "sink")
    wanted = {n for n in range(200) if n % 4}
    wait_for(lambda: delivered(out) >= wanted, 60, "entries through TLS workers")
    assert delivered(out) == wanted, "DEBUG entries were filtered out"

    status = run_cli(config, "status")
    assert status.returncode == 0, status.stderr
    assert f"Redis: rediss://{USER}:***@127.0.0.1:{secure.port}/0?" in status.stdout
    assert "sink:sink_jsonl" in status.stdout
    as_json = run_cli(config, "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = orjson.loads(as_json.stdout)
    assert data["redis"].startswith(f"rediss://{USER}:***@127.0.0.1:{secure.port}/0")
    assert {s["stream"] for s in data["streams"]} >= {KEYS.ingest, KEYS.filtered}
    dlq = run_cli(config, "dlq", "list")
    assert dlq.returncode == 0, dlq.stderr
    for result in (status, as_json, dlq):
        assert_no_password(result.stdout + result.stderr)

    for process in workers.processes:
        process.send_signal(signal.SIGTERM)
    for process in workers.processes:
        assert process.wait(timeout=30) == 0
    logs = workers.output()
    assert f"Redis rediss://{USER}:***@127.0.0.1:{secure.port}/0" in logs
    assert_no_password(logs)


@pytest.mark.slow
def test_tls_files_in_the_url_alone_work_from_the_environment(
    secure: SecureRedis, tmp_path: Path
) -> None:
    """No config file at all: LOGLOOM_REDIS_URL with redis-py's ssl_* query arguments."""
    url = secure.url(query=secure.tls_query())
    env = clean_env(LOGLOOM_REDIS_URL=url, LOGLOOM_CONFIG="")
    text = "one\ntwo\n"
    produced = run_cli(None, "produce", "--format", "text", stdin=text, env=env, cwd=tmp_path)
    assert produced.returncode == 0, produced.stderr
    status = run_cli(None, "status", "--json", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    data = orjson.loads(status.stdout)
    ingest = next(s for s in data["streams"] if s["stream"] == KEYS.ingest)
    assert ingest["length"] == 2
    assert data["redis"] == redact_url(url) and "***" in data["redis"]
    assert_no_password(produced.stdout + produced.stderr + status.stdout + status.stderr)


@pytest.mark.slow
def test_wrong_credentials_give_one_line_without_the_password(
    secure: SecureRedis, tmp_path: Path, workers: Any
) -> None:
    out = tmp_path / "out.jsonl"
    config = write_config(tmp_path, secure, out, redis={"url": secure.url(WRONG_PASSWORD)})
    for args in (("status",), ("status", "--json"), ("dlq", "list")):
        result = run_cli(config, *args)
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(
            f"logloom: Redis at rediss://{USER}:***@127.0.0.1:{secure.port}/0"
        )
        assert "refused the credentials" in lines[0] and "invalid username-password" in lines[0]
        assert_no_password(result.stderr, WRONG_PASSWORD)

    unknown = write_config(
        tmp_path, secure, out, "mallory.yaml", redis={"url": secure.url(user="mallory")}
    )
    result = run_cli(unknown, "produce", stdin=jsonl(range(3)))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "refused the credentials" in result.stderr
    assert_no_password(result.stderr)

    up = run_cli(config, "up")
    assert up.returncode == 1
    assert up.stderr.splitlines()[-1].startswith(
        f"logloom: Redis at rediss://{USER}:***@127.0.0.1:{secure.port}/0"
    ), up.stderr
    assert "refused the credentials" in up.stderr, "no embedded stand-in for a refusing Redis"
    assert_no_password(up.stdout + up.stderr, WRONG_PASSWORD)

    worker = workers.start(config, "filter")
    assert worker.wait(timeout=30) == 1
    assert "refused the credentials" in workers.output()
    assert_no_password(workers.output(), WRONG_PASSWORD)


@pytest.mark.slow
def test_a_plain_client_or_one_without_a_certificate_is_refused(secure: SecureRedis) -> None:
    with (
        pytest.raises(redis.ConnectionError),
        redis.Redis.from_url(f"redis://{USER}:x@127.0.0.1:{secure.port}/0") as plain,
    ):
        plain.ping()
    no_cert = secure.url(query=f"ssl_ca_certs={secure.pki.ca}")
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(no_cert) as anonymous:
        anonymous.ping()


AI_WORDS = """
PLUGIN_INFO = {"name": "ai_words", "version": "1.0.0", "type": "ai"}
def plugin_init(): return 0
def analyze(entry):
    yield {"summary": entry["message"][:1]}
    yield {"summary": entry["message"]}
def plugin_shutdown(): pass
"""


@pytest.mark.slow
def test_up_runs_every_worker_and_metrics_over_tls_without_showing_the_password(
    secure: SecureRedis, tmp_path: Path
) -> None:
    """`logloom up`: filter, sink and ai workers (an RQ worker and scheduler) as children."""
    out = tmp_path / "out.jsonl"
    metrics_port = free_port()
    config = write_config(
        tmp_path,
        secure,
        out,
        metrics={"port": metrics_port},
        ai={"batch_size": 10, "flush_interval_ms": 200},
        plugins={"enabled": ["log_filter_severity", "sink_jsonl", "ai_words"]},
    )
    (tmp_path / "plugins" / "ai_words.py").write_text(AI_WORDS)
    log_path = tmp_path / "up.out"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "up"],
            cwd=tmp_path,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Logloom is up." in log_path.read_text(), 60, "the banner")
        banner = log_path.read_text()
        assert f"Redis    rediss://{USER}:***@127.0.0.1:{secure.port}/0?" in banner
        assert f"--tls --cacert {secure.pki.ca}" in banner and "--user alice --askpass" in banner
        produced = run_cli(config, "produce", stdin=jsonl(range(100)))
        assert produced.returncode == 0, produced.stderr
        wanted = {n for n in range(100) if n % 4}
        wait_for(lambda: delivered(out) >= wanted, 60, "entries through `up` over TLS")
        with secure.client() as client:
            wait_for(
                lambda: client.xlen(KEYS.ai_results) >= 2 * len(wanted),
                60,
                "ai results from the RQ worker over TLS",
            )
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
        text = metrics.decode()
        assert 'logloom_entries_in_total{stage="filter"}' in text
        assert 'logloom_group_lag{group="filter",stream="logloom:ingest"}' in text, (
            "queue figures read from the TLS Redis at scrape time"
        )
        assert_no_password(text)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert_no_password(ps)
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
    assert code == 0, log_path.read_text()[-3000:]
    assert_no_password(log_path.read_text())
