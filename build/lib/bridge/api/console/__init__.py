"""GET /console: the operator console, a page and two static files of this package served
by pushbridge itself (CONTRACT §3). Nothing comes from another origin (the Content
Security Policy says so to the browser too); the page signs in with an API key that the
browser keeps in session storage and sends only as an Authorization header."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bridge.api.problems import Problem

MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
ASSETS = ("console.js", "console.css")
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _files() -> dict[str, bytes]:
    here = resources.files("bridge.api.console")
    return {name: here.joinpath(name).read_bytes() for name in MEDIA_TYPES}


def console_routes() -> list[BaseRoute]:
    """The console's routes, its files read once."""
    files = _files()

    def file_response(name: str) -> Response:
        return Response(files[name], headers=HEADERS, media_type=MEDIA_TYPES[name])

    async def page(request: Request) -> Response:
        return file_response("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in ASSETS:
            raise Problem(404, "not-found", f"no console file {name!r}")
        return file_response(name)

    return [
        Route("/console", page, methods=["GET"]),
        Route("/console/{asset}", asset, methods=["GET"]),
    ]
