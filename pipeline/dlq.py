"""Dead letters: every entry a stage could not pass on, with why, to inspect and replay.

A dead letter is a stream entry on ``<prefix>:dlq:<stage>`` with the fields of CONTRACT §2
(``entry``, ``error``, ``plugin``, ``stage``, ``attempts``, ``source_stream``, ``source_id``,
``failed_at``) plus ``replay_to``: the stream a replay writes the entry back to. That is the
source stream, except for sinks: a sink's dead letters go back to that sink's own replay stream,
so replaying them does not deliver the entries again to the sinks that already have them.

With ``redis.partitions`` > 1 a stage has a DLQ per partition (the ai stage excepted), and its
letters are named ``p<n>:<stream ID>`` (:attr:`DeadLetter.ref`); a bare stream ID is looked up
in every partition's DLQ of the stage. A replay puts each letter back in its own partition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from pipeline.entry import ENTRY_FIELD, timestamp_from_id
from pipeline.keys import Keys
from pipeline.streams import Message, id_tuple

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
    partition: int | None = None  # whose DLQ holds it; None when the stage has only one

    @property
    def ref(self) -> str:
        """How commands name the letter: its ID, after ``p<n>:`` if the stage is partitioned."""
        return self.id if self.partition is None else f"p{self.partition}:{self.id}"

    @property
    def error(self) -> str:
        return self.fields.get("error", "")

    @property
    def replay_to(self) -> str:
        return self.fields.get("replay_to") or self.fields.get("source_stream", "")


def _decode(stream_id: bytes, fields: dict[bytes, bytes], partition: int | None) -> DeadLetter:
    return DeadLetter(
        stream_id.decode(),
        {key.decode(): value.decode(errors="replace") for key, value in fields.items()},
        partition,
    )


def where(keys: Keys, stage: str) -> str:
    """The DLQ stream(s) of ``stage``, for messages."""
    return ", ".join(keys.dlqs(stage))


def _queues(keys: Keys, stage: str) -> list[tuple[int | None, str]]:
    """``(partition, stream)`` of each DLQ of ``stage``; partition None if it has only one."""
    streams = keys.dlqs(stage)
    if len(streams) == 1:
        return [(None, streams[0])]
    return list(enumerate(streams))


def _stream_of(keys: Keys, stage: str, one: DeadLetter) -> str:
    return keys.dlqs(stage)[one.partition or 0]


def _parse_ref(ref: str) -> tuple[int | None, str]:
    """``p2:1700000000000-0`` as ``(2, "1700000000000-0")``; a bare ID as ``(None, ID)``."""
    head, colon, rest = ref.partition(":")
    if colon and head[:1] == "p" and head[1:].isdigit():
        return int(head[1:]), rest
    return None, ref


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
    for key in keys.all_dlqs():
        pipe.xlen(key)
        pipe.xrevrange(key, count=1)
    replies = pipe.execute()
    result = []
    for index, (stage, key) in enumerate(zip(stages, keys.all_dlqs(), strict=True)):
        size, newest = replies[2 * index], replies[2 * index + 1]
        newest_letter = _decode(newest[0][0], newest[0][1], None) if newest else None
        result.append(
            DlqSummary(
                stage,
                key,
                int(size),
                newest_letter.error if newest_letter else "",
                newest_letter.fields.get("plugin", "") if newest_letter else "",
            )
        )
    return result


def newest(client: redis.Redis, keys: Keys, stage: str, count: int = 20) -> list[DeadLetter]:
    """The newest ``count`` dead letters of ``stage``, newest first."""
    letters = [
        _decode(*m, partition)
        for partition, key in _queues(keys, stage)
        for m in cast(list[Message], client.xrevrange(key, count=count))
    ]
    return sorted(letters, key=lambda one: id_tuple(one.id), reverse=True)[:count]


class AmbiguousLetter(KeyError):
    """A bare ID that is in several partitions' DLQs: the caller must name one (``p<n>:ID``)."""


def get(client: redis.Redis, keys: Keys, stage: str, letter_id: str) -> DeadLetter | None:
    """The letter ``letter_id`` names (a :attr:`DeadLetter.ref`); :class:`AmbiguousLetter` if a
    bare ID is in several partitions' DLQs."""
    wanted, stream_id = _parse_ref(letter_id)
    found = [
        _decode(*m, partition)
        for partition, key in _queues(keys, stage)
        if wanted is None or (partition or 0) == wanted
        for m in cast(list[Message], client.xrange(key, min=stream_id, max=stream_id))
    ]
    if len(found) > 1:
        refs = ", ".join(one.ref for one in found)
        raise AmbiguousLetter(
            f"dead letter {letter_id} is in several partitions' DLQs: name one ({refs})"
        )
    return found[0] if found else None


def _select(client: redis.Redis, keys: Keys, stage: str, ids: list[str] | None) -> list[DeadLetter]:
    if ids is None:
        return [
            _decode(*m, partition)
            for partition, key in _queues(keys, stage)
            for m in cast(list[Message], client.xrange(key))
        ]
    letters = [get(client, keys, stage, one) for one in ids]
    missing = [one for one, found in zip(ids, letters, strict=True) if found is None]
    if missing:
        raise KeyError(f"no dead letter {', '.join(missing)} in {where(keys, stage)}")
    return [found for found in letters if found is not None]


def _by_stream(keys: Keys, stage: str, letters: list[DeadLetter]) -> dict[str, list[DeadLetter]]:
    grouped: dict[str, list[DeadLetter]] = {}
    for one in letters:
        grouped.setdefault(_stream_of(keys, stage, one), []).append(one)
    return grouped


def replay(client: redis.Redis, keys: Keys, stage: str, ids: list[str] | None = None) -> int:
    """Put dead letters back on their stream; each leaves the DLQ only in the same transaction.

    ``ids=None`` replays all of them. Returns how many were replayed.
    """
    letters = _select(client, keys, stage, ids)
    # A letter goes back to its own partition: its DLQ and replay_to share a hash slot.
    for dlq_key, queued in _by_stream(keys, stage, letters).items():
        for start in range(0, len(queued), REPLAY_CHUNK):
            pipe = client.pipeline(transaction=True)
            for one in queued[start : start + REPLAY_CHUNK]:
                pipe.xadd(one.replay_to, {ENTRY_FIELD: one.fields.get("entry", "")})
                pipe.xdel(dlq_key, one.id)
            pipe.execute()
    return len(letters)


def purge(client: redis.Redis, keys: Keys, stage: str, ids: list[str] | None = None) -> int:
    """Delete dead letters for good (all of the stage's with ``ids=None``); returns how many."""
    if ids is None:
        size = 0
        for key in keys.dlqs(stage):
            size += int(client.xlen(key))
            client.delete(key)
        return size
    grouped = _by_stream(keys, stage, _select(client, keys, stage, ids))
    return sum(int(client.xdel(key, *[one.id for one in found])) for key, found in grouped.items())


def as_dict(one: DeadLetter) -> dict[str, Any]:
    return {"id": one.ref, **one.fields}
