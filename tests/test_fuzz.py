"""Property tests (hypothesis) for everything that parses what another party sent (issue 5).

The entry decoder (CONTRACT §1, both encodings of §2), the XREADGROUP reply parser, the §5
subprocess protocol on both sides (the worker's parsers and the plugin host) and the §6 service
client. Each parser either returns something well-formed or raises its module's own typed
error, the one its caller catches; never another exception. Deterministic and bounded: every
test runs a fixed set of examples (``derandomize``), no example database; the file takes about
25 s.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from redis._parsers.helpers import parse_xread, parse_xread_resp3

from pipeline.entry import (
    ENTRY_FIELD,
    LEVEL_ALIASES,
    LEVELS,
    Entry,
    decode,
    decode_batch,
    encode,
    normalise_level,
    original_json,
    timestamp_from_id,
    with_json,
)
from pipeline.errors import MalformedEntry, PluginCallError, PluginLoadError
from pipeline.plugin import Failure, PluginInfo, validate_info
from pipeline.runtimes.host import Host, serve
from pipeline.runtimes.process import ChildLink
from pipeline.runtimes.remote import (
    MAX_ANSWER_BYTES,
    LinkError,
    batch_results,
    entries_json,
    read_line,
)
from pipeline.runtimes.service import SocketLink, _error_text
from pipeline.streams import parse_read

ROOT = Path(__file__).resolve().parent.parent
SEVERITY = ROOT / "plugins" / "python" / "log_filter_severity.py"


def fuzz(examples: int) -> Callable[[Any], Any]:
    """The same examples on every run (``derandomize``, no database), no per-example deadline."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------------- strategies

INT64 = st.integers(-(2**63), 2**64 - 1)  # what orjson encodes; it decodes larger ones as floats
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CONTRACT_KEYS = ("timestamp", "level", "module", "message", "lang_key")
PADDING = st.text(alphabet=" \t\r\n", max_size=2)


@st.composite
def level_spellings(draw: st.DrawFn) -> str:
    """A level any producer may send: ours or an alias, in any case, padded with whitespace."""
    word = draw(st.sampled_from(LEVELS + tuple(LEVEL_ALIASES)))
    upper = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    word = "".join(c.upper() if up else c.lower() for c, up in zip(word, upper, strict=True))
    return draw(PADDING) + word + draw(PADDING)


RFC3339 = st.datetimes(timezones=st.just(datetime.timezone.utc)).map(
    lambda moment: moment.isoformat().replace("+00:00", "Z")
)
TEXTS = st.text(max_size=24) | st.sampled_from(["", "\n", "\u2028", "é", "😀", "\x00", '"}'])
LEVELS_ANY = level_spellings() | st.text(max_size=10) | JSON_VALUES
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "timestamp": RFC3339 | TEXTS | JSON_VALUES,
    "level": LEVELS_ANY,
    "module": TEXTS | JSON_VALUES,
    "message": TEXTS | TEXTS | JSON_VALUES,
    "lang_key": st.sampled_from(["auth.login", "a", ""]) | JSON_VALUES,
}
VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "timestamp": RFC3339 | st.none(),
    "level": level_spellings() | st.none(),
    "module": TEXTS | st.none(),
    "lang_key": st.sampled_from(["auth.login", "x"]) | st.none(),
}
EXTRAS = st.dictionaries(
    st.text(max_size=8).filter(lambda key: key not in CONTRACT_KEYS), JSON_VALUES, max_size=4
)


@st.composite
def producer_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object as some producer may send it: contract fields absent, null, well- or
    ill-typed, and extra fields of any JSON."""
    obj = draw(EXTRAS)
    for key in CONTRACT_KEYS:
        if draw(st.booleans()):
            obj[key] = draw(FIELD_VALUES[key])
    return obj


@st.composite
def valid_objects(draw: st.DrawFn) -> dict[str, Any]:
    """An object CONTRACT §1 accepts (levels in any spelling it names, nulls for defaults)."""
    obj = draw(EXTRAS)
    for key, values in VALID_FIELDS.items():
        if draw(st.booleans()):
            obj[key] = draw(values)
    if draw(st.booleans()) or obj.get("lang_key") is None:
        obj["message"] = draw(TEXTS)
    return obj


def dumps_any_style(obj: Any, style: str, pad: tuple[str, str]) -> bytes:
    """``obj`` as JSON the way some producer writes it: compact, pretty (raw newlines),
    ASCII-escaped, with spaces, padded."""
    if style == "orjson":
        text = orjson.dumps(obj).decode()
    elif style == "pretty":
        text = orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()
    elif style == "ascii":
        text = json.dumps(obj, ensure_ascii=True)
    else:
        text = json.dumps(obj, ensure_ascii=False, indent="\t", separators=(" , ", " : "))
    return (pad[0] + text + pad[1]).encode()


STYLES = st.sampled_from(["orjson", "pretty", "ascii", "spaced"])


def entry_field(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[bytes, bytes]]:
    return st.builds(
        lambda obj, style, pad: {ENTRY_FIELD: dumps_any_style(obj, style, pad)},
        objects,
        STYLES,
        st.tuples(PADDING, PADDING),
    )


def flat_value(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else orjson.dumps(value)


FIELD_NAMES = (
    st.sampled_from([*CONTRACT_KEYS, "entry", "host"]).map(str.encode)
    | st.text(max_size=8).map(str.encode)
    | st.binary(max_size=8)
)
FIELD_BYTES = (
    st.binary(max_size=16)
    | TEXTS.map(str.encode)
    | level_spellings().map(str.encode)
    | st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3", b"caf\xc3\xa9"])
)
STREAM_IDS = st.builds(
    lambda ms, seq: f"{ms}-{seq}".encode(),
    st.integers(0, 253402300799999) | st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1) | st.just(0),
)
# The fields a stream entry may carry: any of the two encodings, right or wrong.
STREAM_FIELDS = st.one_of(
    entry_field(producer_objects()),
    entry_field(JSON_VALUES),  # arrays, strings, numbers, null
    st.dictionaries(st.just(ENTRY_FIELD), st.binary(max_size=40), min_size=1),
    st.builds(
        lambda obj: {key.encode(): flat_value(value) for key, value in obj.items()},
        producer_objects(),
    ),
    st.dictionaries(FIELD_NAMES, FIELD_BYTES, max_size=6),
)
LIMITS = st.sampled_from([1 << 20, 65536, 64])
TIMESTAMP_FROM_ID = re.compile(r"\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# ------------------------------------------------------------------------ 1. the entry codec


def producer_view(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """What the producer gave, as the object it stands for (only called once decode accepted)."""
    if ENTRY_FIELD in fields:
        obj = orjson.loads(fields[ENTRY_FIELD])
        assert type(obj) is dict
        return obj
    return {key.decode(): value.decode() for key, value in fields.items()}


def check_decoded(
    stream_id: bytes, fields: dict[bytes, bytes], entry: Entry, payload: bytes
) -> None:
    """What CONTRACT §1 promises of every entry the decoder lets through."""
    assert type(entry) is Entry and type(payload) is bytes
    # One JSON, whoever reads it: the payload, the entry's own bytes, a fresh encoding.
    assert entry.to_json() == payload
    assert orjson.loads(payload) == entry
    assert orjson.loads(orjson.dumps(entry)) == entry
    assert json.loads(payload) == entry
    # The required fields, with the contract's types.
    assert entry["level"] in LEVELS
    assert type(entry["module"]) is str
    assert type(entry["timestamp"]) is str
    message, lang_key = entry.get("message"), entry.get("lang_key")
    assert type(message) is str or (message is None and type(lang_key) is str)
    assert lang_key is None or type(lang_key) is str
    # Nothing the producer gave is lost or overwritten; only defaults and the level's spelling.
    given_obj = producer_view(fields)
    assert set(entry) == set(given_obj) | {"level", "module", "timestamp"}
    for key, value in given_obj.items():
        if key == "level" and value is not None:
            assert entry["level"] == normalise_level(value)
        elif key in ("level", "module", "timestamp") and value is None:
            continue  # null counts as missing: the default below
        else:
            assert entry[key] == value and type(entry[key]) is type(value), key
    if given_obj.get("level") is None:
        assert entry["level"] == "INFO"
    if given_obj.get("module") is None:
        assert entry["module"] == ""
    if given_obj.get("timestamp") is None:
        assert entry["timestamp"] == timestamp_from_id(stream_id)
        assert TIMESTAMP_FROM_ID.fullmatch(entry["timestamp"])
    # Read-only, as plugins see it.
    with pytest.raises(TypeError):
        entry["level"] = "DEBUG"


def decode_or_none(
    decoder: Callable[..., tuple[Entry, bytes]], stream_id: bytes, fields: Any, limit: int
) -> tuple[Entry, bytes] | None:
    """The decoder's answer, or None for MalformedEntry; any other exception fails the test."""
    try:
        decoded = decoder(stream_id, fields, limit)
    except MalformedEntry as exc:
        assert str(exc), "a dead letter needs a reason"
        event(f"rejected: {str(exc).split()[0]}")
        return None
    event("accepted")
    return decoded


@fuzz(800)
@given(stream_id=STREAM_IDS, fields=STREAM_FIELDS, limit=LIMITS)
@example(b"1-0", {b"entry": b'{"message":"m","level":"warning","level":null}'}, 65536)
@example(b"1-0", {b"entry": b'{"message":"m","module":5}'}, 65536)
@example(b"1-0", {b"entry": b'{"message":"m"}\n\t '}, 65536)
@example(b"1-0", {b"entry": b'{"message":"m","n":18446744073709551616}'}, 65536)
@example(b"1-0", {b"level": b"\xff", b"message": b"m"}, 65536)
def test_decode_accepts_only_contract_entries_and_loses_nothing(
    stream_id: bytes, fields: dict[bytes, bytes], limit: int
) -> None:
    """Whatever a producer XADDs: a MalformedEntry (the ingest DLQ) or a §1 entry."""
    decoded = decode_or_none(decode, stream_id, fields, limit)
    if decoded is None:
        # The dead letter still shows what came: the original as JSON.
        original = original_json(fields)
        if not (ENTRY_FIELD in fields and len(fields) == 1):
            orjson.loads(original)
        return
    entry, payload = decoded
    assert sum(len(k) + len(v) for k, v in fields.items()) <= limit + len(ENTRY_FIELD)
    check_decoded(stream_id, fields, entry, payload)


@fuzz(300)
@given(stream_id=STREAM_IDS, obj=valid_objects(), style=STYLES, flat=st.booleans())
def test_decode_accepts_every_valid_entry(
    stream_id: bytes, obj: dict[str, Any], style: str, flat: bool
) -> None:
    """Every entry CONTRACT §1 allows is accepted, in either encoding the producer picks."""
    if flat:
        assume(all(type(value) is str for value in obj.values()) and "entry" not in obj)
        fields = {key.encode(): value.encode() for key, value in obj.items()}
    else:
        fields = {ENTRY_FIELD: dumps_any_style(obj, style, ("", "\n"))}
    entry, payload = decode(stream_id, fields, 1 << 20)
    check_decoded(stream_id, fields, entry, payload)


@fuzz(300)
@given(stream_id=STREAM_IDS, obj=producer_objects())
def test_both_encodings_decode_alike(stream_id: bytes, obj: dict[str, Any]) -> None:
    """Flat fields and the ``entry`` JSON of the same (all-text) object: the same verdict,
    the same entry."""
    text_obj = {key: value for key, value in obj.items() if type(value) is str and key != "entry"}
    flat = {key.encode(): value.encode() for key, value in text_obj.items()}
    as_json = encode(text_obj)
    from_flat = decode_or_none(decode, stream_id, flat, 1 << 20)
    from_json = decode_or_none(decode, stream_id, as_json, 1 << 20)
    assert (from_flat is None) == (from_json is None)
    if from_flat is not None and from_json is not None:
        assert from_flat[0] == from_json[0]
        assert orjson.loads(from_flat[1]) == orjson.loads(from_json[1])


def decode_alone(stream_id: bytes, fields: dict[bytes, bytes], limit: int) -> tuple[Entry, bytes]:
    """:func:`decode_batch` of a batch of one, answering as :func:`decode` does."""
    decoded, malformed = decode_batch([(stream_id, fields)], limit)
    if malformed:
        raise MalformedEntry(malformed[0][2])
    return decoded[0][1], decoded[0][2]


@fuzz(250)
@given(batch=st.lists(st.tuples(STREAM_IDS, STREAM_FIELDS), min_size=1, max_size=6), limit=LIMITS)
@example(
    [
        (
            b"1-0",
            {b"entry": b'{"level":"INFO","timestamp":"t","module":"","message":5,"lang_key":"k"}'},
        )
    ],
    65536,
)
@example(
    [
        (
            b"1-0",
            {b"entry": b'{"level":"INFO","timestamp":"t","module":"","message":"m","lang_key":5}'},
        )
    ],
    65536,
)
@example(
    [(b"1-0", {b"entry": b'{"level":"INFO","module":"","message":"m","timestamp":null}'}),
     (b"1-1", {b"entry": b'{"level":"INFO","module":"","message":"m"}'}),
     (b"2001-0", {b"entry": b'{"level":"INFO","module":"","message":"m"}'})],
    65536,
)  # fmt: skip
def test_the_batch_decoder_agrees_with_decode(
    batch: list[tuple[bytes, dict[bytes, bytes]]], limit: int
) -> None:
    """The stages' batch decoder takes a shortcut, never a different decision: on any batch
    each entry gets what :func:`decode` gives it alone, the same reason when malformed, in the
    batch's order."""
    decoded, malformed = decode_batch(batch, limit)
    expected_decoded, expected_malformed = [], []
    for stream_id, fields in batch:
        try:
            entry, payload = decode(stream_id, fields, limit)
        except MalformedEntry as exc:
            expected_malformed.append((stream_id, fields, str(exc)))
            continue
        expected_decoded.append((stream_id, entry, payload))
    assert malformed == expected_malformed
    assert [(i, dict(e), p) for i, e, p in decoded] == [
        (i, dict(e), p) for i, e, p in expected_decoded
    ]
    assert all(type(entry) is Entry and entry.to_json() == p for _, entry, p in decoded)


@fuzz(250)
@given(stream_id=STREAM_IDS, fields=entry_field(valid_objects()) | STREAM_FIELDS)
def test_forwarded_payload_decodes_to_itself(stream_id: bytes, fields: dict[bytes, bytes]) -> None:
    """What the filter stage forwards decodes, at the sink, to the same entry and bytes,
    whatever stream ID it gets there."""
    decoded = decode_or_none(decode, stream_id, fields, 1 << 20)
    if decoded is None:
        return
    entry, payload = decoded
    for decoder in (decode, decode_alone):
        again, again_payload = decoder(b"99-0", {ENTRY_FIELD: payload}, 1 << 20)
        assert again == entry and again_payload == payload


@fuzz(150)
@given(ms=st.integers(0, 2**64 - 1), seq=st.integers(0, 2**64 - 1), as_text=st.booleans())
def test_timestamp_from_any_stream_id(ms: int, seq: int, as_text: bool) -> None:
    """Every ID Redis can hand out (up to 2⁶⁴-1 ms) gives a UTC time to the millisecond."""
    stream_id = f"{ms}-{seq}"
    text = timestamp_from_id(stream_id if as_text else stream_id.encode())
    assert TIMESTAMP_FROM_ID.fullmatch(text)
    assert text.endswith(f".{ms % 1000:03d}Z")
    # Years 1970-9999: RFC 3339 proper, and back to the same ms. Later IDs (a producer may XADD
    # an explicit one) give a five-digit year, which RFC 3339 cannot write at all.
    if ms <= 253402300799999:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert round(moment.timestamp() * 1000) == ms


# --------------------------------------------------------------- 2. the XREADGROUP reply parser

NAMES = st.text(min_size=1, max_size=10).map(str.encode)
FLAT_FIELDS = st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=12)), max_size=4).map(
    lambda pairs: [item for pair in pairs for item in pair]
)
MESSAGES = st.lists(
    st.tuples(STREAM_IDS, FLAT_FIELDS | st.none()).map(list),  # None: deleted while pending
    max_size=5,
)
RESP2_REPLIES = st.lists(
    st.tuples(NAMES, MESSAGES).map(list), max_size=3, unique_by=lambda pair: pair[0]
)
RESP3_REPLIES = st.dictionaries(NAMES, MESSAGES, max_size=3)


@fuzz(250)
@given(reply=RESP2_REPLIES | st.none())
def test_parse_read_matches_redis_py_resp2(reply: list[Any] | None) -> None:
    ours = parse_read(copy.deepcopy(reply))
    theirs = parse_xread(copy.deepcopy(reply))  # type: ignore[no-untyped-call]
    assert [[name.encode(), messages] for name, messages in ours] == [
        [name, [(message_id, fields) for message_id, fields in messages]]
        for name, messages in theirs
    ]


@fuzz(250)
@given(reply=RESP3_REPLIES)
def test_parse_read_matches_redis_py_resp3(reply: dict[bytes, Any]) -> None:
    ours = parse_read(copy.deepcopy(reply))
    theirs = parse_xread_resp3(copy.deepcopy(reply))  # type: ignore[no-untyped-call]
    assert {name.encode(): messages for name, messages in ours} == {
        name: list(streams[0]) for name, streams in theirs.items()
    }


ANY_REPLIES = st.recursive(
    st.none() | st.binary(max_size=6) | st.text(max_size=4) | st.integers() | st.booleans(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.binary(max_size=4), inner, max_size=3)
        | st.tuples(inner, inner).map(list)
    ),
    max_leaves=16,
)


@fuzz(800)
@given(reply=ANY_REPLIES | RESP2_REPLIES | RESP3_REPLIES)
@example([[b"s", [[b"1-0", [b"a"]]]]])  # odd field list
@example([[b"\xff", []]])  # stream name not UTF-8
@example([[7, []]])  # stream name not a string
@example([[b"s", [b"ab"]]])  # an entry that is a two-byte string
@example({b"s": None})
def test_parse_read_any_reply_shape(reply: Any) -> None:
    """A reply Redis would never send (a broken proxy, a bug) is a typed protocol error."""
    try:
        batches = parse_read(reply)
    except redis.exceptions.InvalidResponse as exc:
        assert "XREADGROUP" in str(exc)
        event("InvalidResponse")
        return
    event("parsed")
    assert type(batches) is list
    for stream, messages in batches:
        assert type(stream) is str
        for message in messages:
            assert type(message) is tuple and len(message) == 2 and type(message[1]) is dict


# ------------------------------------------------------------- 3. the §5 protocol, worker side


def pipe() -> tuple[int, int]:
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    return reader, writer


LINES = st.lists(
    (st.binary(max_size=300) | TEXTS.map(str.encode)).map(lambda line: line.replace(b"\n", b"")),
    max_size=8,
)


@fuzz(150)
@given(
    lines=LINES, tail=st.binary(max_size=20).map(lambda t: t.replace(b"\n", b"")), data=st.data()
)
def test_read_line_splits_anywhere(lines: list[bytes], tail: bytes, data: st.DataObject) -> None:
    """Lines come out exactly as written, however the bytes are chunked on the way; a half line
    at the end is a LinkError that says so."""
    stream = b"".join(line + b"\n" for line in lines) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    reader, writer = pipe()
    buffer = bytearray()
    got: list[bytes] = []
    written_lines = 0
    deadline = time.monotonic() + 5
    try:
        for chunk in chunks:
            os.write(writer, chunk)
            written_lines += chunk.count(b"\n")
            while len(got) < written_lines:  # only lines already in the pipe: never waits
                got.append(read_line(reader, buffer, deadline, "plugin"))
        os.close(writer)
        writer = -1
        with pytest.raises(LinkError, match="closed the connection") as closed:
            read_line(reader, buffer, deadline, "plugin")
        if tail:
            assert f"after half a line ({len(tail)} bytes)" in str(closed.value)
    finally:
        os.close(reader)
        if writer >= 0:
            os.close(writer)
    assert got == lines


def feed_in_thread(writer: int, data: bytes, chunk: int) -> threading.Thread:
    def write() -> None:
        try:
            for start in range(0, len(data), chunk):
                os.write(writer, data[start : start + chunk])
        except BrokenPipeError:
            pass  # the reader gave up, as it should
        finally:
            os.close(writer)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("chunk", [4096, 65536, 1 << 20, 3 << 20])
def test_read_line_limits_an_answer_to_8_mib(chunk: int) -> None:
    """A line of exactly 8 MiB arrives whole; one byte more without a newline is a LinkError."""
    for size, whole in ((MAX_ANSWER_BYTES, True), (MAX_ANSWER_BYTES + 1, False)):
        reader, writer = pipe()
        data = b"x" * size + (b"\n" if whole else b"")
        thread = feed_in_thread(writer, data + (b"" if whole else b"y" * chunk), chunk)
        try:
            if whole:
                assert read_line(reader, bytearray(), time.monotonic() + 20, "p") == data[:-1]
            else:
                with pytest.raises(LinkError, match="over 8 MiB without a newline"):
                    read_line(reader, bytearray(), time.monotonic() + 20, "p")
        finally:
            os.close(reader)
            thread.join(timeout=20)


ERROR_INDEXES = (
    st.integers(-3, 12).map(str)
    | st.text(max_size=4)
    | st.text(alphabet="0123456789", min_size=4290, max_size=4310)  # past int()'s digit limit
    | st.sampled_from(["٣", "²", "0x1", " 1", "1 ", "01", "+1", "1_0"])
)
BATCH_ANSWERS = st.fixed_dictionaries(
    {"status": st.sampled_from([0, 1, 2, "0", None, False, 0.0]) | JSON_VALUES},
    optional={
        "results": st.lists(JSON_VALUES, max_size=6) | JSON_VALUES,
        "errors": st.dictionaries(ERROR_INDEXES, JSON_VALUES, max_size=4) | JSON_VALUES,
        "error": JSON_VALUES,
    },
)


@fuzz(800)
@given(answer=BATCH_ANSWERS | JSON_VALUES, count=st.integers(0, 6))
@example({"status": 0, "results": [True], "errors": {"0" * 4301: "x"}}, 1)
@example({"status": 0, "results": [True, True], "errors": {"1": "bad", "٣": "x"}}, 2)
def test_batch_results_any_answer(answer: Any, count: int) -> None:
    """Any JSON a plugin answers a batch with: ``count`` results (a Failure for each entry the
    answer says failed) or a LinkError; never another exception."""
    # The answer as the client has it: freshly parsed from the line the plugin wrote.
    parsed = orjson.loads(orjson.dumps(answer))
    try:
        results = batch_results(parsed, count)
    except LinkError as exc:
        assert str(exc)
        event("LinkError")
        return
    event("results")
    assert isinstance(results, list) and len(results) == count
    assert isinstance(answer, dict)
    if answer["status"] != 0:
        assert all(isinstance(result, Failure) for result in results)
        return
    failed = {  # "7" or "007": entry 7; anything else names no entry
        int(key.lstrip("0")[:20] or "0"): Failure(str(error))
        for key, error in (answer.get("errors") or {}).items()
        if key.isdecimal() and key.isascii()
    }
    for index, result in enumerate(results):
        assert result == failed.get(index, answer["results"][index])


@st.composite
def entries(draw: st.DrawFn) -> list[Entry]:
    """Entries as a worker holds them: decoded from what producers sent (their bytes kept,
    pretty-printed or not), or built in code."""
    made: list[Entry] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            fields = draw(entry_field(valid_objects()))
            made.append(decode(b"1-0", fields, 1 << 20)[0])
        else:
            obj = draw(st.dictionaries(TEXTS, JSON_VALUES, max_size=4))
            made.append(Entry(obj) if draw(st.booleans()) else with_json(obj, orjson.dumps(obj)))
    return made


@fuzz(250)
@given(batch=entries())
def test_entries_json_is_one_line_of_the_same_entries(batch: list[Entry]) -> None:
    body = entries_json(batch)
    assert b"\n" not in body and b"\r" not in body
    assert orjson.loads(b"[" + body + b"]") == batch
    line = b'{"batch":[' + body + b"]}\n"
    assert line.count(b"\n") == 1 and orjson.loads(line) == {"batch": batch}


@fuzz(250)
@given(
    info=JSON_VALUES
    | st.fixed_dictionaries(
        {
            "name": st.sampled_from(["p", "ok_name", "1bad", ""]) | JSON_VALUES,
            "version": st.sampled_from(["1.0.0", "1.0", "1.0.0-rc.1+b", "1.0.0\n"]) | JSON_VALUES,
            "type": st.sampled_from(["filter", "sink", "ai", "lang", "x"]) | JSON_VALUES,
        },
        optional={
            "capability": JSON_VALUES | st.text(max_size=10),
            "mode": st.sampled_from(["sync", "async"]) | JSON_VALUES,
            "api": st.sampled_from([">=1.0,<2", "<1", "==1.*", "bogus", ""]) | JSON_VALUES,
            "author": JSON_VALUES,
            "description": JSON_VALUES,
        },
    )
)
@example({"name": "p", "version": "1.0.0", "type": ["filter"]})
@example({"name": "p", "version": "1.0.0", "type": {"filter": 1}})
@example({"name": "p", "version": "1.0.0", "type": "filter", "mode": {}})
@example({"name": "p", "version": "1.0.0", "type": "filter", "api": "\x00"})
def test_plugin_info_answers(info: Any) -> None:
    """The ``info`` a plugin process or service answers: a PluginInfo or a PluginLoadError
    (which the links turn into LinkError), never another exception."""
    try:
        parsed = validate_info(orjson.loads(orjson.dumps(info)), "fuzz")
    except PluginLoadError as exc:
        assert str(exc)
        return
    assert isinstance(parsed, PluginInfo)
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", parsed.name)
    assert parsed.type in ("filter", "sink", "ai", "lang")
    assert parsed.mode in ("sync", "async")
    assert all(type(one) is str for one in parsed.capability)


class FakeChild:
    """Enough of a ``Popen`` for :class:`ChildLink`: its pipes, and it never exits."""

    def __init__(self) -> None:
        self.pid = 4711
        to_child, link_writes = os.pipe()
        link_reads, from_child = os.pipe()
        self.stdin = os.fdopen(link_writes, "wb", buffering=0)
        self.stdout = os.fdopen(link_reads, "rb", buffering=0)
        os.set_blocking(link_writes, False)
        os.set_blocking(link_reads, False)
        self._requests = os.fdopen(to_child, "rb", buffering=0)
        self._answers = os.fdopen(from_child, "wb", buffering=0)

    def answer(self, data: bytes) -> None:
        self._answers.write(data)

    def poll(self) -> int | None:
        return None

    def wait(self, timeout: float | None = None) -> int:
        raise subprocess.TimeoutExpired("plugin", timeout or 0)

    def kill(self) -> None:
        pass

    def close(self) -> None:
        for stream in (self.stdin, self.stdout, self._answers, self._requests):
            if not stream.closed:
                stream.close()


ANSWER_LINES = st.one_of(
    BATCH_ANSWERS.map(lambda answer: orjson.dumps(answer) + b"\n"),
    JSON_VALUES.map(lambda answer: orjson.dumps(answer) + b"\n"),
    st.binary(max_size=40),
    st.lists(
        st.fixed_dictionaries(
            {"status": st.sampled_from([0, 1])},
            optional={
                "partial": JSON_VALUES,
                "result": JSON_VALUES,
                "error": JSON_VALUES,
            },
        ).map(orjson.dumps),
        min_size=1,
        max_size=4,
    ).map(lambda lines: b"\n".join(lines) + b"\n"),
)


@fuzz(150)
@given(answer=ANSWER_LINES, count=st.integers(1, 3), streamed=st.booleans())
def test_child_link_any_answer(answer: bytes, count: int, streamed: bool) -> None:
    """Whatever a plugin process writes back: results, or a LinkError (PluginCallError for an
    ai entry's own failure) that the worker turns into a DLQ entry and a restart."""
    link = ChildLink(["plugin"], "fuzz")
    child = FakeChild()
    link.child = child  # type: ignore[assignment]
    batch = [Entry({"level": "INFO", "message": str(n)}) for n in range(count)]
    child.answer(answer)
    deadline = time.monotonic() + 0.05
    try:
        if streamed:
            for _result, final in link.stream(batch[0], 0.05):
                if final:
                    break
        else:
            results = link.call(batch, deadline)
            assert len(results) == count
        event("results")
    except (LinkError, PluginCallError) as exc:
        assert str(exc)
        event(type(exc).__name__)
    finally:
        link.child = None
        child.close()


# ------------------------------------------------------------------- 4. the plugin host (§5)

REQUESTS = st.one_of(
    st.fixed_dictionaries({"entry": producer_objects() | JSON_VALUES}),
    st.fixed_dictionaries(
        {"batch": st.lists(producer_objects() | JSON_VALUES, max_size=4) | JSON_VALUES}
    ),
    st.fixed_dictionaries(
        {"op": st.sampled_from(["info", "init", "shutdown", "nope", ""]) | JSON_VALUES},
        optional={
            "config": st.fixed_dictionaries(
                {}, optional={"min_level": level_spellings() | JSON_VALUES}
            )
            | JSON_VALUES
        },
    ),
    JSON_VALUES,
)
REQUEST_LINES = st.one_of(
    REQUESTS.map(orjson.dumps),
    REQUESTS.map(orjson.dumps),
    REQUESTS.map(orjson.dumps),
    st.binary(max_size=30).map(lambda line: line.replace(b"\n", b"")),
    st.sampled_from([b"", b"   ", b"\r", b'{"entry": {"message": "x"', b"[1, 2", b"\xff{}"]),
)


def answer_lines(raw: bytes) -> list[dict[str, Any]]:
    assert raw == b"" or raw.endswith(b"\n")
    answers = [orjson.loads(line) for line in raw.splitlines()]
    for answer in answers:
        assert type(answer) is dict and answer["status"] in (0, 1)
        if answer["status"] == 1:
            assert type(answer["error"]) is str and answer["error"]
    return answers


@fuzz(100)
@given(lines=st.lists(REQUEST_LINES, min_size=1, max_size=6))
@example([b'{"op": "init", "config": {"min_level": "warning"}}', b'{"entry": {"level": "ERROR"}}'])
@example([b'{"batch": [{"level": [1]}, 3, {"message": "m"}]}', b'{"op": "shutdown"}', b"{}"])
@example([b'{"op": "init", "config": {"min_level": "LOUD"}}', b'{"op": "info"}'])
def test_host_serve_answers_every_request(lines: list[bytes]) -> None:
    """One status line per request, whatever the requests; the host stops only on shutdown
    (exit 0) or when the plugin cannot start with the config it was given (exit 2, CONTRACT
    §5: the worker then reports the plugin as not loadable)."""
    answers = io.BytesIO()
    code = serve(SEVERITY, io.BytesIO(b"\n".join(lines) + b"\n"), answers)
    requests = [line for line in lines if line.strip()]
    got = answer_lines(answers.getvalue())
    assert len(got) <= len(requests) and (len(got) > 0) == (len(requests) > 0)
    if len(got) < len(requests) or code == 2:
        last = orjson.loads(requests[len(got) - 1])
        if code == 0:
            assert last.get("op") == "shutdown" and got[-1] == {"status": 0}
        else:
            assert code == 2 and last.get("op") == "init"
            assert got[-1]["status"] == 1 and "cannot load plugin" in got[-1]["error"]
    else:
        assert code == 0
    for line, answer in zip(requests, got, strict=False):
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            assert answer["status"] == 1 and answer["error"].startswith("bad JSON")
            continue
        check_host_answer(request, answer)


def check_host_answer(request: Any, answer: dict[str, Any]) -> None:
    """The §5 shape of the answer to ``request``."""
    kind = next(
        (key for key in ("batch", "entry", "op") if isinstance(request, dict) and key in request),
        "",
    )
    event(f"host: {kind or type(request).__name__} -> status {answer['status']}")
    if not isinstance(request, dict):
        assert answer["status"] == 1
    elif "batch" in request:
        if isinstance(request["batch"], list):
            assert answer["status"] == 0
            assert len(answer["results"]) == len(request["batch"])
            for index, result in enumerate(answer["results"]):
                if str(index) in answer["errors"]:
                    assert result is None
                else:
                    assert type(result) is bool and isinstance(request["batch"][index], dict)
        else:
            assert answer["status"] == 1
    elif "entry" in request:
        if answer["status"] == 0:
            assert type(answer["result"]) is bool and isinstance(request["entry"], dict)
    elif request.get("op") == "info":
        assert answer["result"]["name"] == "log_filter_severity"
    elif request.get("op") in ("init", "shutdown"):
        if answer["status"] == 0:
            assert answer == {"status": 0}
    else:
        assert answer["status"] == 1 and "unknown request" in answer["error"]


@fuzz(150)
@given(requests=st.lists(REQUESTS, min_size=1, max_size=5))
def test_host_answer_any_request(requests: list[Any]) -> None:
    """``Host.answer`` straight: one JSON status line per request, or PluginLoadError for an
    init whose config the plugin refuses; never another exception."""
    partials: list[bytes] = []
    host = Host(SEVERITY, partials.append)
    try:
        for request in requests:
            parsed = orjson.loads(orjson.dumps(request))
            try:
                line, stop = host.answer(parsed)
            except PluginLoadError:
                assert isinstance(parsed, dict) and parsed.get("op") == "init"
                continue
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            (answer,) = answer_lines(line)
            check_host_answer(parsed, answer)
            assert stop == (
                isinstance(parsed, dict)
                and set(parsed) & {"batch", "entry"} == set()
                and parsed.get("op") == "shutdown"
            )
            if stop:
                break
    finally:
        if host.plugin is not None:
            host.plugin.shutdown()
    assert partials == []  # a filter has no partial results


# ------------------------------------------------------------ 5. the service client (§6)


@contextlib.contextmanager
def service_link() -> Iterator[tuple[SocketLink, socket.socket]]:
    """A SocketLink whose socket's other end is the test, playing the service."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    link = SocketLink("unix:///fuzz.sock", 100)
    link.sock = ours
    try:
        yield link, theirs
    finally:
        link.close()
        theirs.close()


RPC_ANSWERS = st.one_of(
    st.fixed_dictionaries(
        {"jsonrpc": st.just("2.0"), "id": st.just(1) | JSON_VALUES},
        optional={"result": BATCH_ANSWERS | JSON_VALUES, "error": JSON_VALUES},
    ).map(lambda answer: orjson.dumps(answer) + b"\n"),
    JSON_VALUES.map(lambda answer: orjson.dumps(answer) + b"\n"),
    st.binary(max_size=40),
)


@fuzz(250)
@given(answer=RPC_ANSWERS, count=st.integers(1, 3), method=st.sampled_from(["call", "info"]))
@example(b'{"jsonrpc":"2.0","id":1,"result":{"status":0,"results":[1]}}\n', 1, "call")
@example(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"boom"}}\n', 2, "call")
@example(b'{"jsonrpc":"2.0","id":1,"result":[1]}\n{"id":2}\n', 1, "call")
def test_service_link_any_answer(answer: bytes, count: int, method: str) -> None:
    """A service answering anything at all: results, or a LinkError (a failed call, the link
    reopened); never another exception."""
    batch = [Entry({"level": "INFO", "message": str(n)}) for n in range(count)]
    with service_link() as (link, service):
        service.sendall(answer)
        deadline = time.monotonic() + 0.05
        try:
            if method == "call":
                results = link.call(batch, deadline)
                assert isinstance(results, list) and len(results) == count
            else:
                link.request("info", None, deadline)
        except LinkError as exc:
            assert str(exc)
            event("LinkError")
            return
        event("results")
        request = orjson.loads(service.recv(1 << 16).split(b"\n")[0])
        assert request["jsonrpc"] == "2.0" and request["id"] == 1
        if method == "call":
            assert request["params"] == {"entries": batch}


@fuzz(100)
@given(error=JSON_VALUES)
def test_service_error_text(error: Any) -> None:
    assert isinstance(_error_text(orjson.loads(orjson.dumps(error))), str)
