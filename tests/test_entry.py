"""The entry codec (CONTRACT §1, §2): pure logic, no Redis."""

from __future__ import annotations

import copy
import pickle

import orjson
import pytest

from pipeline.entry import (
    Entry,
    decode,
    decode_batch,
    normalise_level,
    original_json,
    timestamp_from_id,
)
from pipeline.errors import MalformedEntry

ID = b"1714478400123-0"  # 2024-04-30T12:00:00.123Z
LIMIT = 65536


def json_fields(obj: object) -> dict[bytes, bytes]:
    return {b"entry": orjson.dumps(obj)}


def test_json_encoding_keeps_extra_fields_and_the_given_timestamp() -> None:
    entry, payload = decode(
        ID,
        json_fields(
            {
                "timestamp": "2025-04-30T12:00:00Z",
                "level": "ERROR",
                "module": "AUTH",
                "message": "bad password",
                "host": "web-1",
                "params": {"user": "alice"},
            }
        ),
        LIMIT,
    )
    assert entry["timestamp"] == "2025-04-30T12:00:00Z"
    assert entry["params"] == {"user": "alice"} and entry["host"] == "web-1"
    assert orjson.loads(payload) == entry


def test_flat_fields_become_top_level_attributes() -> None:
    entry, payload = decode(
        ID,
        {
            b"level": b"error",
            b"module": b"AUTH",
            b"message": b"bad password",
            b"ip": b"192.168.0.5",
        },
        LIMIT,
    )
    assert entry == {
        "level": "ERROR",
        "module": "AUTH",
        "message": "bad password",
        "ip": "192.168.0.5",
        "timestamp": "2024-04-30T12:00:00.123Z",
    }
    assert orjson.loads(payload) == entry


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("warning", "WARN"),
        ("Warn", "WARN"),
        ("critical", "FATAL"),
        (" info ", "INFO"),
        ("err", "ERROR"),
        ("DEBUG", "DEBUG"),
        ("trace", "DEBUG"),
        ("notice", "INFO"),
    ],
)
def test_levels_are_normalised(given: str, expected: str) -> None:
    assert normalise_level(given) == expected
    entry, _ = decode(ID, json_fields({"level": given, "message": "m"}), LIMIT)
    assert entry["level"] == expected


def test_defaults_missing_level_module_and_timestamp() -> None:
    entry, _ = decode(ID, json_fields({"message": "m"}), LIMIT)
    assert entry["level"] == "INFO" and entry["module"] == ""
    assert entry["timestamp"] == timestamp_from_id(ID) == "2024-04-30T12:00:00.123Z"


def test_lang_key_alone_is_enough() -> None:
    entry, _ = decode(ID, json_fields({"lang_key": "auth.login", "params": {"user": "a"}}), LIMIT)
    assert entry["lang_key"] == "auth.login" and "message" not in entry


def test_an_unchanged_entry_is_forwarded_byte_for_byte() -> None:
    raw = b'{"timestamp":"t","level":"INFO","module":"m","message":"x","z":[1,2]}'
    _, payload = decode(ID, {b"entry": raw}, LIMIT)
    assert payload is raw


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"entry": b"{not json"}, "bad JSON"),
        ({b"entry": b"[1, 2]"}, "JSON list, not an object"),
        (json_fields({"level": "VERBOSE", "message": "m"}), "unknown level 'VERBOSE'"),
        (json_fields({"level": 3, "message": "m"}), "unknown level 3"),
        (json_fields({"level": ["x"], "message": "m"}), "unknown level ['x']"),
        (json_fields({"level": {"a": 1}, "message": "m"}), "unknown level {'a': 1}"),
        (json_fields({"level": "INFO"}), "neither message nor lang_key"),
        (json_fields({"message": {"nested": 1}}), "message is a dict"),
        (json_fields({"message": "m", "timestamp": 12}), "timestamp is a int"),
        ({b"level": b"INFO"}, "neither message nor lang_key"),
        ({b"message": b"\xff\xfe"}, "not UTF-8"),
        (
            {b"entry": b'{"message": "m"}', b"level": b"INFO"},
            "both an 'entry' field and flat fields",
        ),
        (json_fields({"message": "x" * 70000}), "over the 65536-byte limit"),
        ({b"message": b"x" * 70000}, "over the 65536-byte limit"),
    ],
)
def test_malformed_entries_name_what_is_wrong(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(MalformedEntry, match=reason.replace("(", r"\(").replace("[", r"\[")):
        decode(ID, fields, LIMIT)


def test_original_json_of_flat_fields_for_dead_letters() -> None:
    assert orjson.loads(original_json({b"level": b"X", b"message": b"m"})) == {
        "level": "X",
        "message": "m",
    }
    assert original_json({b"entry": b"{bad"}) == b"{bad"


def test_entries_are_read_only_but_copyable_and_serialisable() -> None:
    entry, _ = decode(ID, json_fields({"message": "m"}), LIMIT)
    assert isinstance(entry, Entry)
    for change in (
        lambda: entry.__setitem__("level", "X"),
        lambda: entry.pop("level"),
        lambda: entry.update(level="X"),
        entry.clear,
        lambda: entry.setdefault("a", 1),
    ):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert entry["level"] == "INFO"
    mutable = dict(entry)
    mutable["level"] = "ERROR"
    assert orjson.loads(orjson.dumps(entry)) == entry
    assert pickle.loads(pickle.dumps(entry)) == entry
    assert copy.deepcopy(entry) == entry


@pytest.mark.parametrize(
    "raw",
    [
        b'{"message": "m"}',
        b'{"message": "m"}\n',
        b' { "message" : "m", "x": {"y": "}"} }  ',
        b'{"lang_key": "a.b", "level": "warning"}',
        b'{"message":"m","level":"DEBUG","module":"M"}',
    ],
)
def test_forwarded_json_is_the_normalised_entry(raw: bytes) -> None:
    entry, payload = decode(ID, {b"entry": raw}, LIMIT)
    assert orjson.loads(payload) == entry
    assert {"level", "module", "timestamp"} <= set(orjson.loads(payload))
    assert payload.count(b'"level"') == 1 and payload.count(b'"timestamp"') == 1, "no key twice"


@pytest.mark.parametrize(
    "fields",
    [
        {b"entry": b'{"level":"INFO","module":"","message":"m","timestamp":"t","x":1}'},
        {b"entry": b'{"level":"warning","message":"m"}'},
        {b"level": b"error", b"message": b"flat"},
        {b"entry": b'{"level":"INFO","module":"","lang_key":"a.b","timestamp":"t"}'},
    ],
)
def test_the_batch_decoder_equals_decode(fields: dict[bytes, bytes]) -> None:
    (decoded,), _ = decode_batch([(ID, fields)], LIMIT)
    assert decoded[1:] == decode(ID, fields, LIMIT)


def test_the_batch_decoder_rejects_what_decode_rejects_and_keeps_the_order() -> None:
    batch = [(b"1-0", json_fields({"message": "a"})), (b"1-1", {b"entry": b"{nope"}),
             (b"1-2", {b"level": b"INFO", b"message": b"c"})]  # fmt: skip
    decoded, malformed = decode_batch(batch, LIMIT)
    assert [message_id for message_id, _, _ in decoded] == [b"1-0", b"1-2"]
    ((message_id, fields, reason),) = malformed
    assert (message_id, fields) == batch[1] and reason.startswith("bad JSON")
