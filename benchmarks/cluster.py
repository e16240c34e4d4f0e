"""A throw-away Redis Cluster of three masters on loopback, for the scale-out figures and the
cluster tests: ``redis-server --cluster-enabled yes`` ×3, slots split evenly, joined with
CLUSTER ADDSLOTS / MEET as ``redis-cli --cluster create`` would. Nothing is kept on disk."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.crc import key_slot

from benchmarks.figures import BenchmarkError, wait_until

SLOTS = 16384


class Cluster:
    """Three masters on loopback, slots split evenly, joined with CLUSTER MEET.

    ``homes``: keys to spread, one a master: the i-th key's slot is moved to master i (three
    partitions' hash tags do not fall on three masters by themselves).
    """

    def __init__(self, directory: Path, masters: int = 3, homes: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchmarkError("redis-server is not on PATH (.ci/run installs it)")
        self.ports = [_cluster_port() for _ in range(masters)]
        self.processes = []
        for port in self.ports:
            home = directory / str(port)
            home.mkdir()
            options = {
                "port": port, "bind": "127.0.0.1", "cluster-enabled": "yes",
                "cluster-config-file": "nodes.conf", "cluster-node-timeout": 5000, "save": "",
                "appendonly": "no", "dir": home, "logfile": home / "redis.log",
            }  # fmt: skip
            command = [binary, *(part for k, v in options.items() for part in (f"--{k}", str(v)))]
            self.processes.append(subprocess.Popen(command))
        self.nodes = [redis.Redis(port=port) for port in self.ports]
        try:
            wait_until(self._all_answer, 10, "the cluster nodes to start")
            self._join(homes)
        except BaseException:
            self.stop()
            raise

    def _all_answer(self) -> bool:
        try:
            return all(node.ping() for node in self.nodes)
        except redis.ConnectionError:
            return False

    def _join(self, homes: Sequence[str]) -> None:
        step = SLOTS // len(self.nodes) + 1
        owned = [
            set(range(index * step, min(SLOTS, (index + 1) * step)))
            for index in range(len(self.nodes))
        ]
        for index, key in enumerate(homes):
            slot = key_slot(key.encode())
            for slots in owned:
                slots.discard(slot)
            owned[index % len(owned)].add(slot)
        for index, node in enumerate(self.nodes):
            node.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
            node.execute_command("CLUSTER ADDSLOTS", *sorted(owned[index]))
        for port in self.ports[1:]:
            self.nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", port)

        def ready() -> bool:
            for node in self.nodes:
                info = node.cluster("INFO")
                if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(
                    self.nodes
                ):
                    return False
            return True

        wait_until(ready, 30, "cluster_state:ok on every node", poll_s=0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def owner(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as the cluster says (CLUSTER KEYSLOT,
        CLUSTER NODES)."""
        slot = int(self.nodes[0].cluster("KEYSLOT", key))
        assert slot == key_slot(key.encode())
        for address, node in self.nodes[0].cluster("NODES").items():
            # A range is [first, last], a lone slot [slot].
            if any(int(span[0]) <= slot <= int(span[-1]) for span in node["slots"]):
                return int(address.rpartition(":")[2].partition("@")[0])
        raise BenchmarkError(f"slot {slot} not served")

    def stop(self) -> None:
        for node in self.nodes:
            node.close()
        for process in self.processes:
            process.kill()
            process.wait()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, so at most 55535."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise BenchmarkError("no free port pair for a cluster node")
