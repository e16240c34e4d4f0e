"""Write entries into a PostgreSQL table, exactly once per stream entry.

Each batch is one transaction: the rows go into a temporary staging table with ``COPY`` (the
fast path, one round trip for the whole batch), then into the target table with
``INSERT ... ON CONFLICT (stream_id) DO NOTHING``. A batch the sink stage delivers again — the
worker died after the commit and before the ack, or a retry after a timeout that had in fact
committed — therefore adds no row twice: exactly once, keyed by the entry's stream ID
(``entry.id``). The table is created when missing: timestamp, level, module, message, lang_key
and the whole entry as ``jsonb``.

PostgreSQL's text and jsonb cannot hold U+0000, which JSON can (``"\\u0000"``): in an entry that
has one, every NUL (in values and keys) is stored as U+FFFD. A batch PostgreSQL still refuses
(a ``DataError``, or a constraint of a table made by hand) is written again row by row, so only
the refused entries fail (the stage retries them, then dead-letters them) and the rest are stored.

A lost connection raises ``ConnectionError``: the stage holds the entries (pending in its group)
and retries them until the database is back, and the connection is opened again on the next
flush, so a database that restarts costs retries, never entries.
"""

import logging
import re
import uuid
from datetime import datetime

import orjson
import psycopg

PLUGIN_INFO = {
    "name": "sink_postgres",
    "version": "1.0.0",
    "type": "sink",
    "capability": ["batch", "exactly-once"],
    "author": "Logloom Team",
    "description": "PostgreSQL table via COPY, idempotent on the stream entry ID",
}

settings = {
    "dsn": "postgresql://postgres@127.0.0.1:5432/postgres",
    "table": "logloom_entries",
    "create_table": True,
    "connect_timeout_s": 5,
}
state = {"connection": None}
COLUMNS = ("stream_id", "ts", "level", "module", "message", "lang_key", "entry")
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
REFUSED = 1
"""An entry's result when PostgreSQL refuses its row (the cause is logged)."""
ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError)
"""What PostgreSQL raises for a row it cannot store: the entries are at fault, not the link."""
log = logging.getLogger("logloom.plugins.sink_postgres")


def plugin_init(config):
    unknown = set(config) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings.update(config)
    if not TABLE_NAME.match(str(settings["table"])):
        raise ValueError(f"table {settings['table']!r} is not a plain [schema.]name")
    _connect()  # fail at load on a wrong DSN or password, not at the first batch
    return 0


def _connect():
    connection = psycopg.connect(
        settings["dsn"], connect_timeout=int(settings["connect_timeout_s"]), autocommit=False
    )
    if settings["create_table"]:
        with connection.transaction():
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {settings['table']} ("
                " stream_id text PRIMARY KEY,"
                " ts timestamptz,"
                " level text NOT NULL,"
                " module text NOT NULL,"
                " message text,"
                " lang_key text,"
                " entry jsonb NOT NULL,"
                " written_at timestamptz NOT NULL DEFAULT now())"
            )
    state["connection"] = connection
    return connection


def _timestamp(text):
    """The entry's time for the ``ts`` column; None (NULL) if it is not RFC 3339, rather than
    failing the whole batch on one odd producer."""
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def _storable(value):
    """``value`` with U+0000 as U+FFFD in every string, keys too: text and jsonb refuse NUL."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(key): _storable(one) for key, one in value.items()}
    if isinstance(value, list):
        return [_storable(one) for one in value]
    return value


def _row(entry):
    stream_id = entry.id or f"unkeyed/{uuid.uuid4()}"  # not from a stream (a test, a CLI): no dedup
    document = entry.to_json()
    if b"\\u0000" in document:  # rare: only then is the entry copied and encoded again
        entry = _storable(entry)
        document = orjson.dumps(entry)
    return (
        stream_id,
        _timestamp(entry.get("timestamp")),
        entry.get("level"),
        entry.get("module", ""),
        entry.get("message"),
        entry.get("lang_key"),
        document.decode(),
    )


def flush(entries):
    connection = state["connection"]
    if connection is None or connection.closed or connection.broken:
        try:
            connection = _connect()
        except psycopg.OperationalError as exc:
            raise ConnectionError(f"PostgreSQL: {exc}".strip()) from exc
    rows = [_row(entry) for entry in entries]
    try:
        try:
            _write_batch(connection, rows)
        except ROW_ERRORS:
            return _write_row_by_row(connection, rows)
    except psycopg.OperationalError as exc:
        state["connection"] = None  # reconnect on the next flush
        connection.close()
        # ConnectionError: the database is down, not the batch bad; the stage holds the entries.
        raise ConnectionError(f"PostgreSQL: {exc}".strip()) from exc
    return 0


def _write_batch(connection, rows):
    """The fast path: one COPY into the staging table, one INSERT from it, one transaction."""
    table = settings["table"]
    columns = ", ".join(COLUMNS)
    with connection.transaction(), connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS logloom_staging "
            f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY logloom_staging ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(
            f"INSERT INTO {table} ({columns}) "
            f"SELECT {columns} FROM logloom_staging ON CONFLICT (stream_id) DO NOTHING"
        )


def _write_row_by_row(connection, rows):
    """After PostgreSQL refused the batch: each row in its own savepoint of one transaction, so
    only the rows it refuses fail. One result per entry: 0, or :data:`REFUSED`."""
    insert = (
        f"INSERT INTO {settings['table']} ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (stream_id) DO NOTHING"
    )
    results = []
    refused = []
    with connection.transaction(), connection.cursor() as cursor:
        for row in rows:
            try:
                with connection.transaction():
                    cursor.execute(insert, row)
            except ROW_ERRORS as exc:
                refused.append((row[0], exc))
                results.append(REFUSED)
            else:
                results.append(0)
    if refused:
        stream_id, error = refused[0]
        log.warning(
            "sink_postgres: PostgreSQL refused %d of %d entries (the first, %s: %s); "
            "the others are stored",
            len(refused),
            len(rows),
            stream_id,
            (str(error).strip().splitlines() or [type(error).__name__])[0],
        )
    return results


def plugin_shutdown():
    connection, state["connection"] = state["connection"], None
    if connection is not None:
        connection.close()
