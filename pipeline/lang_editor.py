"""Live editing of language packs over HTTP, on the dashboard server (issue 7 part 3).

``GET /api/lang`` lists the packs; ``GET /api/lang/<locale>/<key>`` reads one text (with the
default locale's beside it, and its placeholders); ``PUT`` with ``{"text": "..."}`` writes it
through to ``<lang.packs_dir>/<locale>.yaml`` (:func:`pipeline.langpacks.write_text`: checked
against the default locale's placeholders, edited in place, replaced atomically). Every worker's
``lang_hot_reload`` watches that directory, so the next entries carry the new text within a
second; the dashboard and the workers must see the same ``packs_dir`` (one machine, or a shared
volume).

Guarded by ``lang.edit_token`` (``Authorization: Bearer <token>``, on reads too: packs may hold
internal wording); without a token configured, editing is off and these routes answer 404. A
write must also pass :func:`pipeline.dashboard.api.same_page_only` (a JSON body, no foreign
``Origin``).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from pipeline.config import LangConfig
from pipeline.dashboard.api import JSON, body_from_page, error
from pipeline.dashboard.context import Dashboard
from pipeline.errors import LangEditError, LangPackError
from pipeline.lang import fallback_chain
from pipeline.langpacks import pack_files, placeholders, read_pack, read_text, write_text


def editable_locales(lang: LangConfig) -> dict[str, None]:
    """The configured locales and every locale of their fallback chains, in order."""
    locales = lang.locales or [lang.default]
    return dict.fromkeys(
        step
        for locale in [*locales, lang.default]
        for step in fallback_chain(locale, lang.default, lang.fallback)
    )


def routes(dashboard: Dashboard) -> list[BaseRoute]:
    """``/api/lang`` and ``/api/lang/{locale}/{key}`` (GET, PUT)."""
    lang = dashboard.config.lang
    directory = Path(lang.packs_dir)
    token = lang.edit_token.encode() if lang.edit_token else None
    locales = editable_locales(lang)

    def refused(request: Request) -> JSON | None:
        if token is None:
            return error(404, "editing language packs is off (set lang.edit_token)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            answer = error(401, "a valid token is needed: Authorization: Bearer <lang.edit_token>")
            answer.headers["WWW-Authenticate"] = "Bearer"
            return answer
        return None

    def listing() -> dict[str, Any]:
        packs = {locale: read_pack(path) for locale, path in pack_files(directory)}
        return {
            "default": lang.default,
            "locales": list(lang.locales),
            "editable": list(locales),
            "packs_dir": str(directory),
            "packs": {locale: {"keys": sorted(texts)} for locale, texts in packs.items()},
        }

    def one_text(locale: str, key: str) -> dict[str, Any] | None:
        text = read_text(directory, locale, key)
        if text is None:
            return None
        default_text = read_text(directory, lang.default, key)
        return {
            "locale": locale,
            "key": key,
            "text": text,
            "placeholders": sorted(placeholders(text)),
            "default_locale": lang.default,
            "default_text": default_text,
        }

    async def index(request: Request) -> JSON:
        denied = refused(request)
        if denied is not None:
            return denied
        try:
            return JSON(await run_in_threadpool(listing))
        except LangPackError as exc:
            return error(409, str(exc))

    async def text(request: Request) -> JSON:
        denied = refused(request)
        if denied is not None:
            return denied
        locale, key = request.path_params["locale"], request.path_params["key"]
        if request.method == "PUT":
            return await put(request, locale, key)
        try:
            found = await run_in_threadpool(one_text, locale, key)
        except LangEditError as exc:
            return error(400, str(exc))
        except LangPackError as exc:
            return error(409, str(exc))
        if found is None:
            return error(404, f"no text for {key[:100]!r} in {locale[:40]!r}")
        return JSON(found)

    async def put(request: Request, locale: str, key: str) -> JSON:
        body = await body_from_page(request, '{"text": "..."}')
        if isinstance(body, JSON):
            return body
        if not isinstance(body, dict) or "text" not in body:
            return error(400, 'body: expected {"text": "..."}')
        try:
            edit = await run_in_threadpool(
                write_text, directory, locale, key, body["text"], lang.default, locales
            )
        except LangEditError as exc:
            return error(422, str(exc))
        except LangPackError as exc:
            return error(409, f"the pack is malformed, fix it first: {exc}")
        return JSON(
            {
                "locale": locale,
                "key": key,
                "text": body["text"],
                "previous": edit.previous,
                "file": str(edit.path),
                "mismatched": edit.mismatched,
                "rewritten": edit.rewritten,
            }
        )

    return [
        Route("/api/lang", index),
        Route("/api/lang/{locale}/{key}", text, methods=["GET", "PUT"]),
    ]
