"""The dashboard's page and the JSON endpoints behind it (README, "Dashboard", lists them).

Figures come from the sampler's latest snapshot, so a page, a script polling ``/api/status``
and the event stream all see the same numbers and cost Redis one read per interval. Dead
letters are read and replayed with :mod:`pipeline.dlq`, the code of ``logloom dlq``.

Replaying changes the pipeline, so a replay must come from the page itself: a JSON body
(which a cross-site form cannot send without a CORS preflight this server never grants), and
an ``Origin``, when the browser sends one, naming this server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from pipeline import dlq
from pipeline.dashboard.context import Dashboard
from pipeline.dashboard.sampler import point
from pipeline.keys import DLQ_STAGES

KEEPALIVE_S = 15.0
LETTERS_MAX = 500
REPLAY_IDS_MAX = 10_000
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
LETTER_REF = re.compile(r"^(p\d{1,4}:)?\d{1,20}-\d{1,20}$")  # a dead letter: [p<partition>:]ID


class JSON(JSONResponse):
    """orjson, the codec the rest of Logloom uses (it also takes the snapshots' floats)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str) -> JSON:
    return JSON({"error": message}, status_code=status)


def routes(dashboard: Dashboard) -> list[BaseRoute]:
    """The page, ``/api/status``, ``/api/history``, ``/api/events``, ``/api/dlq/...`` and
    ``/api/ai/results``."""
    page = resources.files(__package__).joinpath("page.html").read_bytes()
    sampler = dashboard.sampler
    keys = dashboard.keys

    async def index(_request: Request) -> Response:
        return Response(page, media_type="text/html", headers={"Cache-Control": "no-store"})

    async def status(_request: Request) -> JSON:
        return JSON(sampler.latest)

    async def history(_request: Request) -> JSON:
        return JSON({"interval_s": dashboard.interval_s, "points": list(sampler.history)})

    async def ai_results(request: Request) -> JSON:
        after = request.query_params.get("after")
        if after is not None and not STREAM_ID.match(after):
            return error(400, f"after: not a stream ID: {after[:40]!r}")
        plugin = request.query_params.get("plugin")
        found = sampler.ai_results_after(after)
        return JSON({"results": [one for one in found if plugin in (None, one.get("plugin"))]})

    async def events(_request: Request) -> StreamingResponse:
        return StreamingResponse(
            event_stream(dashboard),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def letters(request: Request) -> JSON:
        stage = request.path_params["stage"]
        if stage not in DLQ_STAGES:
            return error(404, f"no such stage: {stage[:40]!r} (stages: {', '.join(DLQ_STAGES)})")
        try:
            limit = min(int(request.query_params.get("limit", "20")), LETTERS_MAX)
        except ValueError:
            return error(400, "limit: not a number")
        try:
            found = dlq.newest(dashboard.client, keys, stage, max(limit, 1))
            size = sum(int(dashboard.client.xlen(key)) for key in keys.dlqs(stage))
        except redis.RedisError as exc:
            return error(503, dashboard.redis_error(exc))
        return JSON(
            {
                "stage": stage,
                "stream": dlq.where(keys, stage),
                "size": size,
                "letters": [dlq.as_dict(one) for one in found],
            }
        )

    def one_letter(request: Request) -> JSON:
        stage, letter_id = request.path_params["stage"], request.path_params["id"]
        if stage not in DLQ_STAGES or not LETTER_REF.match(letter_id):
            return error(404, "no such dead letter")
        try:
            found = dlq.get(dashboard.client, keys, stage, letter_id)
        except dlq.AmbiguousLetter as exc:
            return error(409, str(exc.args[0]))
        except redis.RedisError as exc:
            return error(503, dashboard.redis_error(exc))
        if found is None:
            return error(404, f"no dead letter {letter_id} in {dlq.where(keys, stage)}")
        return JSON(dlq.as_dict(found))

    async def replay(request: Request) -> JSON:
        stage = request.path_params["stage"]
        if stage not in DLQ_STAGES:
            return error(404, f"no such stage: {stage[:40]!r}")
        body = await body_from_page(request, '{"ids": [...]} or {"all": true}')
        if isinstance(body, JSON):
            return body
        ids = replay_ids(body)
        if isinstance(ids, str):
            return error(400, ids)
        try:
            count = await run_in_threadpool(dlq.replay, dashboard.client, keys, stage, ids)
        except dlq.AmbiguousLetter as exc:
            return error(409, str(exc.args[0]))
        except KeyError as exc:  # an ID that is not (or no longer) in the DLQ
            return error(404, str(exc.args[0]))
        except redis.RedisError as exc:
            return error(503, dashboard.redis_error(exc))
        return JSON({"replayed": count, "stream": dlq.where(keys, stage)})

    return [
        Route("/", index),
        Route("/api/status", status),
        Route("/api/history", history),
        Route("/api/events", events),
        Route("/api/ai/results", ai_results),
        Route("/api/dlq/{stage}", letters),
        Route("/api/dlq/{stage}/replay", replay, methods=["POST"]),
        Route("/api/dlq/{stage}/{id}", one_letter),
    ]


def same_page_only(request: Request) -> JSON | None:
    """None if a state-changing request may come from this server's page; else the refusal."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return error(415, "send the request as application/json")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return error(403, f"cross-origin request from {origin[:100]} refused")
    return None


async def body_from_page(request: Request, expected: str) -> Any:
    """The JSON body of a state-changing request from this server's page, or the error answer
    (a JSON response) to send instead; ``expected`` describes the body in that answer."""
    refused = same_page_only(request)
    if refused is not None:
        return refused
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return error(400, f"body: expected JSON, {expected}")


def replay_ids(body: Any) -> list[str] | str | None:
    """The IDs a replay body names (None: all of them), or what is wrong with it."""
    if not isinstance(body, dict):
        return 'body: expected {"ids": [...]} or {"all": true}'
    if body.get("all") is True:
        return None
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or len(ids) > REPLAY_IDS_MAX:
        return f'ids: expected a list of 1 to {REPLAY_IDS_MAX} stream IDs, or {{"all": true}}'
    bad = [one for one in ids if not isinstance(one, str) or not LETTER_REF.match(one)]
    if bad:
        return f"ids: not a stream ID: {str(bad[0])[:40]!r}"
    return [str(one) for one in ids]


async def event_stream(dashboard: Dashboard) -> AsyncIterator[str]:
    """Server-sent events: ``hello`` (the latest snapshot, the history and the kept ai
    results), then ``status`` per snapshot (with its chart ``point``) and ``ai`` per batch of
    new results. Ends when the server stops, so it never holds up a shutdown."""
    sampler = dashboard.sampler
    seq = sampler.seq
    sent_results = sampler.ai_results_after(None)
    last_result = sent_results[-1]["id"] if sent_results else None
    yield sse(
        "hello",
        {
            "status": sampler.latest,
            "history": list(sampler.history),
            "interval_s": dashboard.interval_s,
            "history_s": dashboard.config.dashboard.history_minutes * 60,
            "ai_results": sent_results,
        },
    )
    while not dashboard.closing:
        if not await dashboard.wait_newer(seq, KEEPALIVE_S):
            yield ": keepalive\n\n"
            continue
        seq = sampler.seq
        snapshot = sampler.latest
        chart_point = point(snapshot) if snapshot["error"] is None else None
        yield sse("status", {**snapshot, "point": chart_point})
        fresh = sampler.ai_results_after(last_result)
        if fresh:
            last_result = fresh[-1]["id"]
            yield sse("ai", fresh)


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"
