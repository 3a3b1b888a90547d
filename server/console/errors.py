"""The console's refusals: an HTTP status and a JSON body a person can act on."""

from __future__ import annotations

import json

from aiohttp import web

_KINDS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
    404: web.HTTPNotFound, 409: web.HTTPConflict, 413: web.HTTPRequestEntityTooLarge,
}


def refuse(status: int, message: str) -> web.HTTPException:
    """The exception to raise for `status` (one of _KINDS), with {"error": message}."""
    body = json.dumps({"error": message})
    if status == 413:
        return web.HTTPRequestEntityTooLarge(max_size=0, actual_size=0, text=body,
                                            content_type="application/json")
    return _KINDS[status](text=body, content_type="application/json")


@web.middleware
async def json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Every refusal as JSON, including aiohttp's own (a body too big, no such route)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        return web.json_response({"error": exc.reason if not exc.text or
                                  exc.text.startswith(f"{exc.status}:") else exc.text},
                                 status=exc.status)
