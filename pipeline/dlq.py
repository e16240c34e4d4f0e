"""Dead letters: every entry a stage could not pass on, with why, to inspect and replay.

A dead letter is a stream entry on ``<prefix>:dlq:<stage>`` with the fields of CONTRACT §2
(``entry``, ``error``, ``plugin``, ``stage``, ``attempts``, ``source_stream``, ``source_id``,
``failed_at``) plus ``replay_to``: the stream a replay writes the entry back to. That is the
source stream, except for sinks: a sink's dead letters go back to that sink's own replay stream,
so replaying them does not deliver the entries again to the sinks that already have them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from pipeline.entry import ENTRY_FIELD, timestamp_from_id
from pipeline.keys import Keys
from pipeline.streams import Message

REPLAY_CHUNK = 500


def letter(
    entry_json: bytes,
    *,
    error: str,
    plugin: str,
    stage: str,
    attempts: int,
    source_stream: str,
    source_id: bytes | str,
    replay_to: str | None = None,
) -> dict[FieldT, EncodableT]:
    """The fields of one dead letter, ready for XADD."""
    return {
        ENTRY_FIELD: entry_json,
        "error": error,
        "plugin": plugin,
        "stage": stage,
        "attempts": attempts,
        "source_stream": source_stream,
        "source_id": source_id,
        "replay_to": replay_to or source_stream,
        "failed_at": timestamp_from_id(f"{int(time.time() * 1000)}-0"),
    }


@dataclass(frozen=True)
class DeadLetter:
    id: str
    fields: dict[str, str]

    @property
    def error(self) -> str:
        return self.fields.get("error", "")

    @property
    def replay_to(self) -> str:
        return self.fields.get("replay_to") or self.fields.get("source_stream", "")


def _decode(stream_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        stream_id.decode(),
        {key.decode(): value.decode(errors="replace") for key, value in fields.items()},
    )


@dataclass(frozen=True)
class DlqSummary:
    stage: str
    key: str
    size: int
    newest_error: str
    newest_plugin: str


def summaries(client: redis.Redis, keys: Keys) -> list[DlqSummary]:
    """Size and newest error of every stage's DLQ (empty ones included)."""
    pipe = client.pipeline(transaction=False)
    stages = [key.rsplit(":", 1)[1] for key in keys.all_dlqs()]
    for stage in stages:
        pipe.xlen(keys.dlq(stage))
        pipe.xrevrange(keys.dlq(stage), count=1)
    replies = pipe.execute()
    result = []
    for index, stage in enumerate(stages):
        size, newest = replies[2 * index], replies[2 * index + 1]
        newest_letter = _decode(*newest[0]) if newest else None
        result.append(
            DlqSummary(
                stage,
                keys.dlq(stage),
                int(size),
                newest_letter.error if newest_letter else "",
                newest_letter.fields.get("plugin", "") if newest_letter else "",
            )
        )
    return result


def newest(client: redis.Redis, keys: Keys, stage: str, count: int = 20) -> list[DeadLetter]:
    """The newest ``count`` dead letters of ``stage``, newest first."""
    return [
        _decode(*m) for m in cast(list[Message], client.xrevrange(keys.dlq(stage), count=count))
    ]


def get(client: redis.Redis, keys: Keys, stage: str, letter_id: str) -> DeadLetter | None:
    found = cast(list[Message], client.xrange(keys.dlq(stage), min=letter_id, max=letter_id))
    return _decode(*found[0]) if found else None


def _select(client: redis.Redis, keys: Keys, stage: str, ids: list[str] | None) -> list[DeadLetter]:
    if ids is None:
        return [_decode(*m) for m in cast(list[Message], client.xrange(keys.dlq(stage)))]
    letters = [get(client, keys, stage, one) for one in ids]
    missing = [one for one, found in zip(ids, letters, strict=True) if found is None]
    if missing:
        raise KeyError(f"no dead letter {', '.join(missing)} in {keys.dlq(stage)}")
    return [found for found in letters if found is not None]


def replay(client: redis.Redis, keys: Keys, stage: str, ids: list[str] | None = None) -> int:
    """Put dead letters back on their stream; each leaves the DLQ only in the same transaction.

    ``ids=None`` replays all of them. Returns how many were replayed.
    """
    letters = _select(client, keys, stage, ids)
    dlq_key = keys.dlq(stage)
    for start in range(0, len(letters), REPLAY_CHUNK):
        chunk = letters[start : start + REPLAY_CHUNK]
        pipe = client.pipeline(transaction=True)
        for one in chunk:
            pipe.xadd(one.replay_to, {ENTRY_FIELD: one.fields.get("entry", "")})
            pipe.xdel(dlq_key, one.id)
        pipe.execute()
    return len(letters)


def purge(client: redis.Redis, keys: Keys, stage: str, ids: list[str] | None = None) -> int:
    """Delete dead letters for good (all of the stage's with ``ids=None``); returns how many."""
    if ids is None:
        size = int(client.xlen(keys.dlq(stage)))
        client.delete(keys.dlq(stage))
        return size
    _select(client, keys, stage, ids)
    return int(client.xdel(keys.dlq(stage), *ids))


def as_dict(one: DeadLetter) -> dict[str, Any]:
    return {"id": one.id, **one.fields}
