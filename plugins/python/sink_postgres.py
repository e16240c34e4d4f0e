"""Write entries into a PostgreSQL table, exactly once per stream entry.

Each batch is one transaction: the rows go into a temporary staging table with ``COPY`` (the
fast path, one round trip for the whole batch), then into the target table with
``INSERT ... ON CONFLICT (stream_id) DO NOTHING``. A batch the sink stage delivers again — the
worker died after the commit and before the ack, or a retry after a timeout that had in fact
committed — therefore adds no row twice: exactly once, keyed by the entry's stream ID
(``entry.id``). The table is created when missing: timestamp, level, module, message, lang_key
and the whole entry as ``jsonb``.

A lost connection fails the batch (the stage retries it with backoff, then dead-letters it) and
is opened again on the next flush, so a database that restarts costs retries, not entries.
"""

import re
import uuid
from datetime import datetime

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


def _row(entry):
    return (
        entry.id or f"unkeyed/{uuid.uuid4()}",  # not from a stream (a test, a CLI): no dedup
        _timestamp(entry.get("timestamp")),
        entry.get("level"),
        entry.get("module", ""),
        entry.get("message"),
        entry.get("lang_key"),
        entry.to_json().decode(),
    )


def flush(entries):
    connection = state["connection"]
    if connection is None or connection.closed or connection.broken:
        try:
            connection = _connect()
        except psycopg.OperationalError as exc:
            raise ConnectionError(f"PostgreSQL: {exc}".strip()) from exc
    table = settings["table"]
    columns = ", ".join(COLUMNS)
    try:
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS logloom_staging "
                f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cursor.copy(f"COPY logloom_staging ({columns}) FROM STDIN") as copy:
                for entry in entries:
                    copy.write_row(_row(entry))
            cursor.execute(
                f"INSERT INTO {table} ({columns}) "
                f"SELECT {columns} FROM logloom_staging ON CONFLICT (stream_id) DO NOTHING"
            )
    except psycopg.OperationalError as exc:
        state["connection"] = None  # reconnect on the next flush
        connection.close()
        # ConnectionError: the database is down, not the batch bad; the stage holds the entries.
        raise ConnectionError(f"PostgreSQL: {exc}".strip()) from exc
    return 0


def plugin_shutdown():
    connection, state["connection"] = state["connection"], None
    if connection is not None:
        connection.close()
