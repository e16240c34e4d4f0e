"""The attack matrix of issue 5: untrusted plugins in the sandbox, through real workers, a real
Redis and the real kernel layers (namespaces, Landlock, seccomp, rlimits) of this machine.

Each attack leaves evidence if it works (a file outside the work directory, a key in Redis, a
process); the tests look for that evidence, not only for an error message. Every entry must end
delivered or in the DLQ with its cause, and the worker must live through all of it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import wait_for
from plugin_kit import compile_c
from test_plugins_e2e import delivered

from pipeline.entry import Entry
from pipeline.keys import Keys
from pipeline.plugin import Failure
from pipeline.runtimes.process import host_command, load_in_child
from pipeline.sandbox import SandboxSpec

pytestmark = [pytest.mark.slow, pytest.mark.plugins]

ATTACKER = """
import os, socket, subprocess, sys
PLUGIN_INFO = {"name": "attacker", "version": "1.0.0", "type": "filter"}
settings = {}
def plugin_init(config):
    settings.update(config)
    return 0
def plugin_shutdown(): pass

def plugin_process(entry):
    attack = entry["message"]
    outside = settings["outside"]
    if attack == "write outside its directory":
        with open(os.path.join(outside, "written"), "w") as f:
            f.write("pwned")
    elif attack == "spawn a shell":
        subprocess.run(["/bin/sh", "-c", f"touch {outside}/shell"])
    elif attack == "call os.system":
        os.system(f"touch {outside}/system")
    elif attack == "connect to Redis directly":
        with socket.create_connection(("127.0.0.1", settings["redis_port"]), timeout=1) as s:
            s.sendall(b"SET pwned 1\\r\\n")
            s.recv(100)
    elif attack == "fork-bomb":
        while True:
            os.fork()
    elif attack == "allocate 2 GB":
        hog = bytearray(2 * 1024**3)
        hog[-1] = 1
    elif attack == "spin the CPU forever":
        while True:
            pass
    elif attack == "print 100 MB to stdout":
        line = "x" * 65535
        for _ in range(1600):
            print(line)
    elif attack == "return non-JSON":
        return {1, 2}
    elif attack == "write in its work directory":
        with open("scratch.txt", "w") as f:
            f.write("fine")
        return os.getuid() != 0
    return True
"""

ATTACKS = {
    # attack: (what the DLQ reason must say, or None: the entry must be delivered)
    "write outside its directory": "sandbox blocked open for writing",
    "spawn a shell": "sandbox blocked subprocess.Popen",
    "call os.system": "sandbox blocked os.system",
    "connect to Redis directly": "sandbox blocked socket",
    "fork-bomb": "sandbox blocked os.fork",
    "allocate 2 GB": "MemoryError",
    "spin the CPU forever": "did not answer in time",
    "return non-JSON": "must return bool",
    "print 100 MB to stdout": None,
    "write in its work directory": None,
}


def sandboxed_config(
    write_config: Callable[..., Path], tmp_path: Path, redis_port: int, **settings: Any
) -> Path:
    return write_config(
        plugins={
            "enabled": ["attacker", "sink_jsonl"],
            "config": {
                "attacker": {"outside": str(tmp_path / "outside"), "redis_port": redis_port},
                "sink_jsonl": {"path": str(tmp_path / "out.jsonl")},
            },
            "settings": settings,
            "python": {"sandbox": True, "work_dir": str(tmp_path / "work"), "timeout": 1000},
        }
    )


def test_the_attack_matrix_through_a_real_worker(
    client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
    attack_matrix: list[tuple[str, str]],
) -> None:
    write_plugin("attacker", ATTACKER)
    (tmp_path / "outside").mkdir()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    # Every Python plugin is sandboxed but the trusted sink, which writes outside its directory.
    config = sandboxed_config(write_config, tmp_path, port, sink_jsonl={"sandbox": False})
    keys = Keys()
    pipe = client.pipeline(transaction=False)
    for seq in range(60):  # ordinary entries around the attacks
        message = list(ATTACKS)[seq // 6] if seq % 6 == 5 else f"ordinary {seq}"
        entry = {"level": "INFO", "module": "M", "message": message, "seq": seq}
        pipe.xadd(keys.ingest, {"entry": orjson.dumps(entry)})
    pipe.execute()
    worker = workers.start(config, "filter")
    workers.start(config, "sink")

    wanted_dlq = sum(1 for reason in ATTACKS.values() if reason)
    letters = wait_for(
        lambda: (found := client.xrange(keys.dlq("filter"))) and len(found) >= wanted_dlq and found,
        90,
        "every attack's entry in the DLQ",
    )
    out = wait_for(lambda: (d := delivered(tmp_path / "out.jsonl")) and len(d) >= 52 and d, 60)
    reasons = {
        orjson.loads(fields[b"entry"])["message"]: fields[b"error"].decode()
        for _, fields in letters
    }
    for attack, reason in ATTACKS.items():
        if reason is None:
            assert attack in {entry["message"] for entry in out.values()}, attack
            attack_matrix.append((attack, "contained; entry delivered"))
        else:
            assert reason in reasons.get(attack, ""), (attack, reasons.get(attack))
            attack_matrix.append((attack, f"blocked; DLQ: {reasons[attack][:60]}"))
    assert len(out) + len(letters) == 60, "every entry delivered or dead-lettered, once"
    assert all(fields[b"plugin"] == b"attacker" for _, fields in letters)

    # The evidence each attack would have left, had it worked.
    assert list((tmp_path / "outside").iterdir()) == []
    assert client.get("pwned") is None
    assert (tmp_path / "work" / "attacker" / "scratch.txt").read_text() == "fine"
    assert worker.poll() is None, "the worker lives on"
    log = workers.output()
    assert "Plugin 'attacker' sandboxed: rlimits (memory 100 MB" in log
    for layer in ("network namespace", "user nobody", "landlock", "seccomp (", "audit hooks"):
        assert layer in log.split("sandboxed: ", 1)[1].splitlines()[0], layer
    assert "bytes of output dropped" in log, "the flood was cut, and said so"
    assert len(log) < 2_000_000, "100 MB printed did not reach the worker's log"
    assert "Plugin 'attacker' failed on 1 entries: SandboxBlocked: sandbox blocked os.system" in log
    assert "Plugin 'attacker': the plugin ran out of memory; its host is started again" in log


C_ATTACKER = r"""
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
static char outside[512];
int plugin_configure(const char *json) {
    const char *key = "\"outside\":\"", *at = strstr(json, key);
    if (at) sscanf(at + strlen(key), "%511[^\"]", outside);
    return 0;
}
int plugin_process(const log_entry_t *e) {
    char path[600];
    if (!strcmp(e->message, "c writes outside")) {
        snprintf(path, sizeof path, "%s/from_c", outside);
        FILE *f = fopen(path, "w");
        if (!f) return -1;
        fputs("pwned", f);
        fclose(f);
    } else if (!strcmp(e->message, "c forks")) {
        pid_t pid = fork();
        if (pid < 0) return -1;
        if (pid == 0) _exit(0);
        waitpid(pid, NULL, 0);
    } else if (!strcmp(e->message, "c runs a shell")) {
        snprintf(path, sizeof path, "touch %s/shell_from_c", outside);
        if (system(path) != 0) return -1;
    } else if (!strcmp(e->message, "c connects to Redis")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return -1;
        close(fd);
    } else if (!strcmp(e->message, "c signals the worker")) {
        if (kill(getppid(), 0) != 0) return -1;
    } else if (!strcmp(e->message, "c allocates 2 GB")) {
        char *p = malloc(2UL << 30);
        if (!p) return -1;
        for (size_t i = 0; i < (2UL << 30); i += 4096) p[i] = 1;
        free(p);
    }
    return 1;
}
"""


def test_the_kernel_layers_hold_against_native_code(
    tmp_path: Path, attack_matrix: list[tuple[str, str]]
) -> None:
    """A C plugin is not seen by audit hooks: here Landlock, seccomp and rlimits do the work."""
    plugin = compile_c(tmp_path / "plugins", "filter_native.so", C_ATTACKER)
    outside = tmp_path / "outside"
    outside.mkdir()
    spec = SandboxSpec(work_dir=str(tmp_path / "work"))
    loaded = load_in_child(
        host_command(plugin, spec), "filter_native", "c-isolated", {"outside": str(outside)}, 2000
    )
    assert loaded is not None
    try:
        attacks = ["c writes outside", "c forks", "c runs a shell", "c connects to Redis",
                   "c signals the worker", "c allocates 2 GB"]  # fmt: skip
        entries = [Entry(level="INFO", module="M", message=attack) for attack in attacks]
        results = loaded.call_batch([*entries, Entry(level="INFO", module="M", message="fine")])
        for attack, result in zip(attacks, results, strict=False):
            assert isinstance(result, Failure), (attack, result)
            attack_matrix.append((attack, f"blocked by the kernel; DLQ: {result.error[:50]}"))
        assert results[-1] is True
        assert list(outside.iterdir()) == []
    finally:
        loaded.shutdown()


def test_a_hung_sandboxed_plugin_is_replaced_and_its_cpu_is_capped(tmp_path: Path) -> None:
    """The timeout ends a spinning call; the CPU rlimit would end it even if the worker could
    not (here: a worker-side timeout longer than the CPU allowance)."""
    plugin = tmp_path / "spinner.py"
    plugin.write_text(
        "PLUGIN_INFO = {'name': 'spinner', 'version': '1.0.0', 'type': 'filter'}\n"
        "def plugin_init(config): return 0\n"
        "def plugin_shutdown(): pass\n"
        "def plugin_process(entry):\n"
        "    while entry['message'] == 'spin': pass\n"
        "    return True\n"
    )
    spec = SandboxSpec(work_dir=str(tmp_path / "work"), max_cpu_s=1)
    loaded = load_in_child(host_command(plugin, spec), "spinner", "python-subprocess", {}, 20_000)
    assert loaded is not None
    try:
        started = time.monotonic()
        (result,) = loaded.call_batch([Entry(level="INFO", module="M", message="spin")])
        elapsed = time.monotonic() - started
        assert isinstance(result, Failure) and "SIGXCPU" in result.error, result
        assert elapsed < 15, "the CPU cap, not the 20 s timeout (twice: alone again), ended it"
        assert loaded.call_batch([Entry(level="INFO", module="M", message="ok")]) == [True]
    finally:
        loaded.shutdown()


def test_a_host_that_cannot_enter_its_sandbox_never_runs_the_plugin(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plugin = tmp_path / "naive.py"
    plugin.write_text(f"open({str(marker)!r}, 'w').close()\n")
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the work directory should be")
    spec = SandboxSpec(work_dir=str(blocked / "work"))
    argv = [*host_command(plugin).argv[:-1], "--sandbox", spec.to_json(), str(plugin)]
    answer = subprocess.run(
        argv, input=b'{"op": "info"}\n', capture_output=True, timeout=30, env=dict(os.environ)
    )
    assert answer.returncode == 2
    assert b"cannot load plugin: sandbox:" in answer.stdout
    assert not marker.exists()


RESTRICTED_FILTER = """
import re
PLUGIN_INFO = {"name": "keyword_filter", "version": "1.0.0", "type": "filter"}
settings = {"pattern": "password"}
def plugin_init(config):
    settings.update(config)
    return 0
def plugin_shutdown(): pass
def plugin_process(entry):
    words = [word for word in entry.get("message", "").split() if word]
    return bool(words) and re.search(settings["pattern"], entry["message"]) is None
"""
ESCAPES = {  # name: (module top, function body)
    "subclass_walk": ("", "return ().__class__.__bases__[0].__subclasses__() is None"),
    "imports_os": ("import os\n", "return os.system('id') == 0"),
    "uses_open": ("", "return open('/etc/passwd').read() == ''"),
    "module_walk": ("import statistics\n", "return statistics.sys.modules['os'].getcwd() == ''"),
}


def test_restricted_mode_runs_plain_logic_and_refuses_the_ways_out(
    tmp_path: Path, attack_matrix: list[tuple[str, str]]
) -> None:
    from pipeline.config import parse_config
    from pipeline.discovery import load_plugins

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "keyword_filter.py").write_text(RESTRICTED_FILTER)
    for name, (top, body) in ESCAPES.items():
        (plugins / f"{name}.py").write_text(
            f"{top}PLUGIN_INFO = {{'name': '{name}', 'version': '1.0.0', 'type': 'filter'}}\n"
            "def plugin_init(config): return 0\n"
            "def plugin_shutdown(): pass\n"
            f"def plugin_process(entry):\n    {body}\n"
        )
    config = parse_config(
        {
            "plugins": {
                "enabled": ["keyword_filter", *ESCAPES],
                "paths": [str(plugins)],
                "config": {"keyword_filter": {"pattern": "secret"}},
                "python": {"restricted": True, "work_dir": str(tmp_path / "work")},
            }
        }
    )
    failures: list[str] = []
    loaded = load_plugins(config, failures=failures)
    try:
        assert [plugin.name for plugin in loaded] == ["keyword_filter", "uses_open", "module_walk"]
        entries = [Entry(level="INFO", module="M", message=m) for m in ("a secret", "fine", "")]
        assert loaded[0].call_batch(entries) == [False, True, False]
        assert loaded[0].plugin.runtime == "python-subprocess"
        (result,) = loaded[1].call_batch(entries[:1])
        assert isinstance(result, Failure) and "name 'open' is not defined" in result.error
        (result,) = loaded[2].call_batch(entries[:1])
        assert isinstance(result, Failure), "statistics.sys must not lead to sys.modules"
        assert "restricted mode: module 'sys' is not allowed" in result.error
    finally:
        for plugin in loaded:
            plugin.shutdown()
    assert len(failures) == 2, failures
    assert '"__subclasses__" is an invalid attribute name' in failures[0]
    assert failures[1].endswith("import of 'os' is not allowed")
    attack_matrix.append(("restricted: walk __subclasses__", "refused at load (RestrictedPython)"))
    attack_matrix.append(("restricted: import os", "refused at load (RestrictedPython)"))
    attack_matrix.append(("restricted: open a file", "NameError; DLQ"))
    attack_matrix.append(("restricted: statistics.sys.modules", "AttributeError; DLQ"))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("capsh"), reason="needs root and capsh")
def test_root_without_cap_sys_admin_keeps_the_other_layers(tmp_path: Path) -> None:
    """A default container: root, but no CAP_SYS_ADMIN. No namespaces then; the plugin still
    loads, in every other layer, and says which are off."""
    plugin = tmp_path / "plain.py"
    plugin.write_text(
        "PLUGIN_INFO = {'name': 'plain', 'version': '1.0.0', 'type': 'filter'}\n"
        "def plugin_init(config): return 0\n"
        "def plugin_shutdown(): pass\n"
        "def plugin_process(entry): return True\n"
    )
    spec = SandboxSpec(work_dir=str(tmp_path / "work"))
    host = " ".join(shlex.quote(part) for part in host_command(plugin, spec).argv)
    requests = b'{"op": "init", "config": {}}\n{"entry": {"message": "x"}}\n'
    answer = subprocess.run(["capsh", "--drop=cap_sys_admin", "--", "-c", host],
                            input=requests, capture_output=True, timeout=60)  # fmt: skip
    init, result = (orjson.loads(line) for line in answer.stdout.splitlines())
    assert result == {"status": 0, "result": True}, answer.stderr
    assert "network namespace: off (no CAP_SYS_ADMIN)" in init["sandbox"]
    assert any(
        layer.startswith("user: uid 0 kept with no capabilities") for layer in init["sandbox"]
    )
    assert any(layer.startswith("seccomp (") for layer in init["sandbox"])
