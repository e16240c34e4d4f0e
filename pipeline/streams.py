"""Redis Streams plumbing shared by every stage: groups, batched reads, reclaim, safe trimming.

Works on Redis 6.2 and newer: where ``XINFO GROUPS`` has no ``lag`` (before 7.0), lag is counted
with a bounded ``XRANGE`` instead. Also on a Redis Cluster (``redis.cluster``): every command and
script here touches the keys of one partition, which share a hash slot (:mod:`pipeline.keys`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import redis
from hiredis import pack_command
from redis._parsers import hiredis as hiredis_parser
from redis._parsers.hiredis import _HiredisParser
from redis.cluster import ClusterNode, RedisCluster
from redis.typing import EncodableT, FieldT

Message = tuple[bytes, dict[bytes, bytes]]
Command = tuple[Any, ...]  # arguments of one Redis command, to queue with the next read
LAG_COUNT_LIMIT = 10_000
# What redis-py's hiredis reader answers while a reply is incomplete (False before redis-py 6;
# since, False is a RESP3 boolean reply).
_NOT_ENOUGH_DATA = getattr(hiredis_parser, "NOT_ENOUGH_DATA", False)
_PUSH = getattr(hiredis, "PushNotification", None)  # RESP3 pushes, told apart (hiredis 3.2+)


def connect(url: str, cluster: bool = False) -> redis.Redis:
    """A client for the stages: bytes, not str (the codec decodes once), and XREADGROUP replies
    left as Redis sends them for :func:`parse_read`, which builds each entry's fields more
    cheaply than redis-py's generic parser (0.2 instead of 0.5 µs an entry, measured).

    ``cluster``: a RedisCluster reached through any node of ``url``. It has the commands and
    pipelines Logloom uses, so it is typed as a Redis and callers need not know.
    """
    if not cluster:
        client = redis.Redis.from_url(
            url, decode_responses=False, health_check_interval=30, socket_keepalive=True
        )
        client.set_response_callback("XREADGROUP", _unparsed)
        return client
    nodes = RedisCluster.from_url(
        url, decode_responses=False, health_check_interval=30, socket_keepalive=True
    )
    # A node's own client parses its replies; the cluster's callbacks only run after that. A
    # node that joins later parses XREADGROUP the generic way, which parse_read also reads.
    nodes.set_response_callback("XREADGROUP", _unparsed)  # type: ignore[no-untyped-call]
    for node in nodes.get_nodes():  # type: ignore[no-untyped-call]
        if node.redis_connection is not None:
            node.redis_connection.set_response_callback("XREADGROUP", _unparsed)
    return cast(redis.Redis, nodes)


def read_route(client: redis.Redis, stream: str) -> ClusterNode | None:
    """On a cluster, the node serving ``stream``, for :func:`queue_read`; else None.

    In a pipeline, redis-py finds the keys of XREADGROUP and EVAL by asking the server (COMMAND
    GETKEYS): one more round trip per batch, which naming the node (from the client's slot
    table) saves. A command sent to a node that lost the slot is redirected as usual.
    """
    if isinstance(client, RedisCluster):
        return client.get_node_from_key(stream)
    return None


def route(client: redis.Redis, command: Command) -> dict[str, Any]:
    """``target_nodes`` for one queued write on a cluster (see :func:`read_route`): the node of
    its first key; {} elsewhere."""
    if not isinstance(client, RedisCluster):
        return {}
    return {"target_nodes": client.get_node_from_key(_first_key(command))}


def _first_key(command: Command) -> Any:
    """EVAL's first key after numkeys, any other command's first argument: true of every
    write a stage queues."""
    return command[3] if command[0] in ("EVAL", "EVALSHA") else command[1]


def split_by_node(
    client: redis.Redis, commands: Sequence[Command], key: str
) -> tuple[list[Command], list[Command]]:
    """``(those served by the node of key, the rest)``: on a cluster, the writes that may
    travel in an :func:`exchange` with ``key``'s node, and those (a tap record) that must
    go through the cluster client. Elsewhere all of them are ``key``'s."""
    if not isinstance(client, RedisCluster):
        return list(commands), []
    slot = client.keyslot(key)
    here: list[Command] = []
    elsewhere: list[Command] = []
    for command in commands:
        same = client.keyslot(_first_key(command)) == slot
        (here if same else elsewhere).append(command)
    return here, elsewhere


def node_client(client: redis.Redis, key: str) -> redis.Redis:
    """The client to :func:`exchange` commands on ``key`` with: ``client`` itself, or on a
    cluster the node serving ``key`` (from the client's slot table)."""
    if not isinstance(client, RedisCluster):
        return client
    node = client.get_node_from_key(key)
    return node.redis_connection or client.get_redis_connection(node)


def refresh_routes(client: redis.Redis) -> None:
    """After a MOVED or ASK answer: read the cluster's slot table again."""
    if isinstance(client, RedisCluster):
        client.nodes_manager.initialize()


def _unparsed(response: Any, **_options: Any) -> Any:
    return response


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` reading from its start (entries already there included)."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_command(
    group: str, consumer: str, streams: Mapping[str, str], count: int, block_ms: int | None
) -> Command:
    """XREADGROUP of ``streams`` (stream -> ``>`` for new entries, ``0`` for our own); it blocks
    up to ``block_ms`` when nothing is there (None or 0: answers at once)."""
    block = ("BLOCK", block_ms) if block_ms else ()
    return (
        "XREADGROUP", "GROUP", group, consumer, "COUNT", count, *block,
        "STREAMS", *streams.keys(), *streams.values(),
    )  # fmt: skip


def queue_read(pipe: redis.client.Pipeline, read: Command, node: ClusterNode | None = None) -> None:
    """Queue ``read`` (:func:`read_command`) in ``pipe``; on a cluster, to ``node``
    (:func:`read_route`)."""
    routing = {} if node is None else {"target_nodes": node}
    pipe.execute_command(*read, **routing)  # type: ignore[no-untyped-call]


def exchange(
    client: redis.Redis, commands: Sequence[Command], meanwhile: Callable[[], None] = lambda: None
) -> list[Any]:
    """Send ``commands`` in one write, run ``meanwhile`` while Redis works on them, then read
    every reply, a refused command's as its ResponseError in its place.

    Packed by hiredis and read straight off a connection, without redis-py's pipeline (its
    packing and bookkeeping cost more than Redis spends on the commands), and the round trip
    overlaps the caller's work instead of adding to it. Replies are as Redis sends them. On a
    cluster, ``client`` is a node's (:func:`node_client`) and nothing is redirected: a MOVED or
    ASK answer comes back as the reply, for the caller to :func:`refresh_routes` and retry.
    """
    packed = b"".join([pack_command(command) for command in commands])
    return exchange_packed(client, packed, len(commands), meanwhile)


def exchange_packed(
    client: redis.Redis, packed: bytes, count: int, meanwhile: Callable[[], None] = lambda: None
) -> list[Any]:
    """:func:`exchange` of ``count`` commands packed in RESP already."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([packed])  # type: ignore[no-untyped-call]
        meanwhile()
        return _read_replies(connection, count)
    except BaseException:
        connection.disconnect()  # type: ignore[no-untyped-call]  # replies may be left unread
        raise
    finally:
        pool.release(connection)


def _read_replies(connection: Any, count: int) -> list[Any]:
    """``count`` replies off ``connection``, a refused command's as its ResponseError.

    Straight from the hiredis reader of redis-py's parser where there is one:
    ``Connection.read_response`` spends ~0.6 µs a reply on bookkeeping, a third of what
    producing an entry costs (measured), and a producer reads a reply per entry. RESP3 push
    messages go to the parser's handler, as ``read_response`` would send them. Any other
    parser goes the documented way.
    """
    parser = connection._parser
    reader = getattr(parser, "_reader", None)
    if (
        not isinstance(parser, _HiredisParser)
        or reader is None
        or (
            _PUSH is None and str(connection.protocol) == "3"  # pushes would look like replies
        )
    ):
        return [_reply_or_error(connection) for _ in range(count)]
    replies: list[Any] = []
    while len(replies) < count:
        reply = reader.gets()
        if type(reply) is bytes:  # first: the cheapest check, and what XADD answers
            replies.append(reply)
        elif reply is _NOT_ENOUGH_DATA:
            try:
                parser.read_from_socket()  # type: ignore[no-untyped-call]
            except OSError as exc:  # a reset connection: as redis-py's read_response says it
                raise redis.ConnectionError(f"Error while reading from socket: {exc}") from exc
        elif isinstance(reply, redis.ConnectionError):  # e.g. "max number of clients reached"
            raise reply
        elif _PUSH is not None and isinstance(reply, _PUSH):
            parser.handle_push_response(reply)  # type: ignore[no-untyped-call]
        else:
            replies.append(reply)
    return replies


def _reply_or_error(connection: Any) -> Any:
    try:
        return connection.read_response()
    except redis.ResponseError as exc:
        return exc


def parse_read(reply: Any) -> list[tuple[str, list[Message]]]:
    """``[(stream, [(id, fields), ...]), ...]`` from a raw XREADGROUP reply; [] on timeout.

    An entry deleted while pending comes with no fields: ``{}``. A reply of another shape (a
    broken proxy, a bug) is redis-py's InvalidResponse, as for any reply it cannot read.
    """
    if not reply:
        return []
    try:
        pairs = reply.items() if isinstance(reply, dict) else reply  # RESP3 or RESP2
        return [
            (_stream_name(stream), [_message(m) for m in messages]) for stream, messages in pairs
        ]
    except (TypeError, ValueError, AttributeError) as exc:
        raise redis.exceptions.InvalidResponse(
            f"XREADGROUP reply of an unexpected shape ({exc}): {str(reply)[:200]}"
        ) from None


def _stream_name(name: Any) -> str:
    if isinstance(name, bytes):
        return name.decode()
    if isinstance(name, str):
        return name
    raise TypeError(f"a stream name is a {type(name).__name__}")


def _message(raw: list[Any]) -> Message:
    message_id, flat = raw
    if not flat:
        return message_id, {}
    if isinstance(flat, dict):  # parsed already (a cluster node without our callback)
        return message_id, flat
    if len(flat) == 2:  # the common case: one field, `entry`
        return message_id, {flat[0]: flat[1]}
    return message_id, dict(zip(flat[::2], flat[1::2], strict=True))


# A whole batch in one command: redis-py spends far more time packing and parsing one command
# per entry than Redis spends running them. Lua does not roll back, so the script checks every
# key's type before its first write (a key of the wrong type would otherwise fail it halfway),
# and Redis lets a script that has started writing finish even past maxmemory: every dead
# letter, forward and acknowledgement of the batch happens, or none does.
#   KEYS: source, target, dead-letter streams...
#   ARGV: group, #ids, ids..., #payloads, payloads..., #letters,
#         then per letter: KEYS index of its DLQ, #field-and-value items, items...
FORWARD_AND_ACK = """
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a stream')
  end
end
local group = ARGV[1]
local ids = tonumber(ARGV[2])
local payloads_at = 3 + ids
local payloads = tonumber(ARGV[payloads_at])
local at = payloads_at + payloads + 1
for _ = 1, tonumber(ARGV[at]) do
  local key, items = KEYS[tonumber(ARGV[at + 1])], tonumber(ARGV[at + 2])
  redis.call('XADD', key, '*', unpack(ARGV, at + 3, at + 2 + items))
  at = at + 2 + items
end
for i = payloads_at + 1, payloads_at + payloads do
  redis.call('XADD', KEYS[2], '*', 'entry', ARGV[i])
end
for first = 3, 2 + ids, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(ARGV, first, math.min(first + 999, 2 + ids)))
end
return ids
"""


def forward_and_ack(
    source: str,
    group: str,
    ids: Sequence[bytes],
    target: str,
    payloads: Sequence[bytes],
    letters: Sequence[tuple[str, Mapping[FieldT, EncodableT]]] = (),
) -> Command:
    """The EVAL that XADDs ``payloads`` to ``target`` (field ``entry``), each dead letter to its
    DLQ, and XACKs ``ids`` on ``source`` — atomically, in one command."""
    dlq_keys = list(dict.fromkeys(key for key, _ in letters))
    letter_args: list[EncodableT] = [len(letters)]
    for key, fields in letters:
        items = [item for pair in fields.items() for item in pair]
        letter_args += [3 + dlq_keys.index(key), len(items), *items]
    return (
        "EVAL", FORWARD_AND_ACK, 2 + len(dlq_keys), source, target, *dlq_keys,
        group, len(ids), *ids, len(payloads), *payloads, *letter_args,
    )  # fmt: skip


def idle_pending(
    client: redis.Redis, stream: str, group: str, min_idle_ms: int, count: int, exclude: str
) -> list[tuple[bytes, int]]:
    """``(id, times delivered)`` of entries pending longer than ``min_idle_ms``, oldest first.

    Entries of consumer ``exclude`` (the caller itself: a sink's buffered entries) are left out.
    """
    rows = client.xpending_range(stream, group, min="-", max="+", count=count, idle=min_idle_ms)
    mine = exclude.encode()
    return [
        (cast(bytes, row["message_id"]), int(row["times_delivered"]))
        for row in rows
        if row["consumer"] not in (mine, exclude)
    ]


def own_pending(
    client: redis.Redis, stream: str, group: str, consumer: str, count: int
) -> list[bytes]:
    """IDs of up to ``count`` entries pending for ``consumer``, oldest first."""
    rows = client.xpending_range(stream, group, min="-", max="+", count=count,
                                 consumername=consumer)  # fmt: skip
    return [cast(bytes, row["message_id"]) for row in rows]


def claim(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    ids: Sequence[bytes],
) -> list[Message]:
    """XCLAIM ``ids`` if still idle (another worker may have been quicker); deleted ones skipped."""
    reply = cast(list[Message], client.xclaim(stream, group, consumer, min_idle_ms, list(ids)))
    return [m for m in reply if m and m[0] is not None and m[1] is not None]


# Check and delete in one atomic step: a consumer that reads entries between a separate check
# and XGROUP DELCONSUMER would lose them from the pending list.
FORGET_IF_IDLE = """
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] == ARGV[2] then
    if info['pending'] == 0 and info['idle'] > tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
"""


def forget_idle_consumers(
    client: redis.Redis, stream: str, group: str, min_idle_ms: int, exclude: str
) -> int:
    """Remove consumers with nothing pending, idle past ``min_idle_ms`` (stopped workers, whose
    names are never reused; a live one idle that long is simply created again by its next
    read); returns how many."""
    removed = 0
    for consumer in client.xinfo_consumers(stream, group):
        name = text(consumer["name"])
        if name != exclude and not consumer["pending"] and consumer["idle"] > min_idle_ms:
            removed += int(client.eval(FORGET_IF_IDLE, 1, stream, group, name, min_idle_ms))
    return removed


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _oldest_pending(client: redis.Redis, stream: str, group: Mapping[str, Any]) -> Any:
    """The oldest pending ID of a group from XINFO GROUPS; None if nothing is pending (also when
    the group acknowledged everything between XINFO and XPENDING)."""
    if not int(group["pending"]):
        return None
    return client.xpending(stream, group["name"])["min"]


def id_tuple(stream_id: bytes | str) -> tuple[int, int]:
    """``"1700000000000-3"`` as ``(1700000000000, 3)``: stream IDs compared as Redis orders them
    (``-10`` after ``-9``), not as text."""
    ms, _, seq = text(stream_id).partition("-")
    return int(ms), int(seq or 0)


def trim_acknowledged(client: redis.Redis, stream: str) -> int:
    """Delete entries every group has read and acknowledged; never one a group still needs.

    A stream without groups is left alone: nobody has read it yet. Returns entries deleted.
    """
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc):
            return 0  # gone (a Redis restart without persistence): nothing to trim
        raise
    if not groups:
        return 0
    floor: tuple[int, int] | None = None
    for group in groups:
        oldest = _oldest_pending(client, stream, group)
        if oldest is not None:
            keep_from = id_tuple(oldest)
        else:
            ms, seq = id_tuple(group["last-delivered-id"])
            keep_from = (ms, seq + 1)
        floor = keep_from if floor is None else min(floor, keep_from)
    assert floor is not None
    if floor <= (0, 1):
        return 0
    return int(client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=True))


@dataclass(frozen=True)
class GroupStats:
    stream: str
    group: str
    consumers: int
    pending: int
    lag: int | None  # None: the stream was trimmed past the group (lag unknown)
    lag_capped: bool
    oldest_pending_s: float
    last_delivered_id: str


def stream_length(client: redis.Redis, stream: str) -> int:
    return int(client.xlen(stream))


def group_stats(client: redis.Redis, stream: str) -> list[GroupStats]:
    """Lag, pending and consumers of each group on ``stream``; [] if the stream does not exist."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return []
    now_ms = time.time() * 1000
    stats = []
    for group in groups:
        name = text(group["name"])
        pending = int(group["pending"])
        oldest_s = 0.0
        oldest = _oldest_pending(client, stream, group)
        if oldest is not None:
            oldest_s = max(0.0, (now_ms - id_tuple(oldest)[0]) / 1000)
        last = text(group["last-delivered-id"])
        lag, capped = _lag(client, stream, group, last)
        stats.append(
            GroupStats(stream, name, int(group["consumers"]), pending, lag, capped, oldest_s, last)
        )
    return stats


def _lag(
    client: redis.Redis, stream: str, group: Mapping[str, Any], last: str
) -> tuple[int | None, bool]:
    if "lag" in group:  # Redis 7.0+
        return (None if group["lag"] is None else int(group["lag"])), False
    entries = cast(
        list[Message], client.xrange(stream, min=f"({last}", max="+", count=LAG_COUNT_LIMIT)
    )
    return len(entries), len(entries) >= LAG_COUNT_LIMIT
