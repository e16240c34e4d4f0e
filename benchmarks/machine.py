"""The machine a benchmark ran on: cores, platform, Redis, Python and the libraries that matter."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import redis


def machine_facts(client: redis.Redis) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "redis": client.info("server")["redis_version"],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis-py": metadata.version("redis"),
        "redis-py parser": "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure Python",
        "hiredis": metadata.version("hiredis"),
        "orjson": metadata.version("orjson"),
        "logloom": metadata.version("logloom"),
    }


def print_facts(facts: dict[str, Any]) -> None:
    for name, value in facts.items():
        print(f"{name + ':':17} {value}")
