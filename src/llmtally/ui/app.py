"""The dashboard's ASGI application: the page, its static files, and a small read-only JSON API.

``GET /api/overview``, ``/api/calls``, ``/api/call`` and ``/api/export.csv`` take the page's own
query string (``view.parse_view``); ``/api/changed`` is what the page polls to know that calls were
written. Nothing here writes to the ledger, and the page is static: every value from the ledger
reaches the browser as JSON and is put in the page as text, never as markup, under a Content
Security Policy that runs no script but the page's own files.

Who may read: ``Guard`` answers only requests whose ``Host`` is one the server was bound as (a web
page cannot reach a loopback dashboard by DNS rebinding), and, when a token is set (the server is
bound beyond loopback), only requests that carry it: ``?token=`` once (it becomes an HttpOnly
cookie), the cookie, or ``Authorization: Bearer``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._report.refusals import recent_refusals
from ..ledger import Ledger, LedgerError
from .calls import call_json, calls_csv, page, parse_before
from .overview import overview
from .view import View, parse_view

__all__ = ["COOKIE", "Guard", "create_app"]

STATIC = Path(__file__).parent / "static"
COOKIE = "llmtally_ui_token"
#: Every response: no script, style or connection but the dashboard's own; never framed.
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


class Guard:
    """ASGI middleware: the Host check, the token check, and the security headers."""

    def __init__(self, app: ASGI, *, hosts: Collection[str] | None, token: str | None) -> None:
        self.app = app
        #: Allowed Host header values (lowercase, with their port); None: any (a token guards).
        self.hosts = None if hosts is None else {h.lower() for h in hosts}
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if self.hosts is not None and headers.get("host", "").lower() not in self.hosts:
            await self._plain(scope, receive, send, 421, "llmtally ui: unknown host name")
            return
        if self.token is not None:
            given = _token_of(scope, headers)
            if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
                await self._plain(
                    scope,
                    receive,
                    send,
                    401,
                    "llmtally ui: open the address `llmtally ui` printed, with its ?token=",
                )
                return
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            if "token" in query and scope.get("method") == "GET":
                # Once: the token becomes a cookie and leaves the address bar (and the history).
                rest = {k: v for k, v in query.items() if k != "token"}
                target = scope.get("path", "/") + ("?" + urlencode(rest, doseq=True) if rest else "")
                redirect = RedirectResponse(target, status_code=303)
                redirect.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
                await self._send(redirect, scope, receive, send)
                return

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                raw += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _plain(self, scope: Scope, receive: Receive, send: Send, status: int, text: str) -> None:
        await self._send(PlainTextResponse(text, status_code=status), scope, receive, send)

    @staticmethod
    async def _send(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
        response.headers.update(HEADERS)
        await response(scope, receive, send)


def _token_of(scope: Scope, headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    query: dict[str, list[str]] = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
    if query.get("token"):
        return query["token"][-1]
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is no token
        return None
    morsel = cookie.get(COOKIE)
    return None if morsel is None else str(morsel.value)


def _view(request: Request) -> View:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return parse_view(params)


def _bad(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


def create_app(
    ledger: Ledger, *, money: Mapping[str, Any] | None = None, poll_seconds: float = 2.0
) -> Starlette:
    """The dashboard over an open (read-only) ``ledger``; ``money``: the report's ``currency`` and
    ``rates`` (default: those configured)."""
    money = dict(money or {})

    def index(request: Request) -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    def api_overview(request: Request) -> Response:
        try:
            view = _view(request)
            doc = overview(ledger, view, money, request.query_params.get("tagkey") or None)
        except (ValueError, LedgerError) as exc:
            return _bad(exc)
        doc["ledger"] = ledger.url
        doc["poll_seconds"] = poll_seconds
        return JSONResponse(doc)

    def api_calls(request: Request) -> Response:
        try:
            view = _view(request)
            limit = max(1, min(500, int(request.query_params.get("limit") or 50)))
            doc = page(
                ledger,
                view,
                only=request.query_params.get("only") or None,
                before=parse_before(request.query_params.get("before")),
                limit=limit,
            )
        except (ValueError, LedgerError) as exc:
            return _bad(exc)
        doc["command"] = view.command(["model"], ledger=str(ledger.url))
        return JSONResponse(doc)

    def api_refusals(request: Request) -> Response:
        try:
            view = _view(request)
            limit = max(1, min(500, int(request.query_params.get("limit") or 50)))
            doc = recent_refusals(ledger, view.start, view.end, view.where, limit=limit)
        except (ValueError, LedgerError) as exc:
            return _bad(exc)
        return JSONResponse(doc)

    def api_call(request: Request) -> Response:
        call_id = request.query_params.get("id") or ""
        at = request.query_params.get("at")
        try:
            record = ledger.record(call_id, float(at) if at else None)
        except (ValueError, LedgerError) as exc:
            return _bad(exc)
        if record is None:
            return JSONResponse({"error": "no such call in this ledger"}, status_code=404)
        return JSONResponse(call_json(record))

    def api_changed(request: Request) -> Response:
        try:
            stamp = ledger.changed()
        except LedgerError as exc:
            return _bad(exc)
        return JSONResponse({"stamp": [str(v) for v in stamp]})

    def api_export(request: Request) -> Response:
        try:
            view = _view(request)
            what = request.query_params.get("view") or "overview"
            only = request.query_params.get("only") or None
            if what == "calls":
                body = calls_csv(ledger, view, only=only)
                name = "llmtally-calls.csv"
                return StreamingResponse(
                    body,
                    media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'},
                )
            text = _report_csv(ledger, view, money)
        except (ValueError, LedgerError) as exc:
            return _bad(exc)
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="llmtally-report.csv"'},
        )

    routes = [
        Route("/", index),
        Route("/api/overview", api_overview),
        Route("/api/calls", api_calls),
        Route("/api/call", api_call),
        Route("/api/refusals", api_refusals),
        Route("/api/changed", api_changed),
        Route("/api/export.csv", api_export),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)


def _report_csv(ledger: Ledger, view: View, money: Mapping[str, Any]) -> str:
    """The overview's table as ``llmtally report --by STACK --format csv`` writes it."""
    import io

    from .._report import report
    from .._report.render import render

    by = [view.stack]
    rows = report(
        ledger,
        since=view.start,
        until=view.end,
        by=by,
        where=view.where,
        currency=money.get("currency"),
        rates=money.get("rates"),
    )
    out = io.StringIO()
    render(rows, by, "csv", out)
    return out.getvalue()
