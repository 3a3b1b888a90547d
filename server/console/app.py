"""The supervisors' web console, served by the Voxline process itself (aiohttp on its
event loop): the pages under static/, and the API they call.

Every API route asks `ConsoleAuth` who is asking; a call or record the viewer may not
see answers 404, exactly as one that does not exist. Live views stream (server-sent
events, a WebSocket for listen-in) from each call's watch (session/watch.py), which
never makes the call wait for a slow browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from voxline.console.auth import COOKIE, ConsoleAuth, Viewer, check_same_origin
from voxline.console.errors import json_errors, refuse
from voxline.console.live import LiveCalls, call_row
from voxline.records import recording_path
from voxline.session.call import CallSession, Supervise
from voxline.transport.service import VoiceAgentService

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_CALLS_EVERY_S = 0.25  # the live list is looked at this often, sent when it changed
_CALLS_AT_LEAST_S = 2.0  # and sent this often anyway (durations move)
_MAX_BODY = 64 * 1024
_HEADERS = {  # the pages load nothing from elsewhere, and are never framed
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
KEY = web.AppKey("console", "Console")


@dataclass
class Console:
    service: VoiceAgentService
    auth: ConsoleAuth
    live: LiveCalls

    def call(self, request: web.Request) -> tuple[CallSession, Viewer]:
        """The request's call in progress and who asks (401, 403 or 404 otherwise)."""
        viewer = self.auth.viewer(request)
        session = self.live.session(viewer, request.match_info["session_id"])
        if session is None:
            raise refuse(404, "no call in progress with that id (it may have ended: see "
                              "the history)")
        return session, viewer

    def record(self, request: web.Request) -> dict[str, Any]:
        """The request's call record, if the asker may see it."""
        viewer = self.auth.viewer(request)
        store = self.service.rt.services.records
        if store is None:
            raise refuse(404, "call records are off on this server (records.enabled)")
        rec = store.find_session(request.match_info["session_id"])
        if rec is None or not viewer.may_see(rec["tenant"]):
            raise refuse(404, "no call record with that id")
        return rec


def _console(request: web.Request) -> Console:
    return request.app[KEY]


@web.middleware
async def _secure_headers(request: web.Request, handler):  # type: ignore[no-untyped-def]
    response = await handler(request)
    response.headers.update(_HEADERS)
    return response


# ---------------------------------------------------------------------- log-in

async def login(request: web.Request) -> web.Response:
    check_same_origin(request)
    body = await _json(request)
    console = _console(request)
    viewer = console.auth.viewer_of_key(str(body.get("key", "")), str(body.get("name", "")))
    if viewer is None:
        raise refuse(401, "key not recognised: use your tenant's or an operator's API key")
    response = web.json_response(viewer.as_json())
    console.auth.set_cookie(response, console.auth.log_in(viewer))
    log.info("console: %s logged in", viewer.who)
    return response


async def login_link(request: web.Request) -> web.Response:
    """The link printed at start when no tenants are configured: log in and go on."""
    console = _console(request)
    viewer = console.auth.viewer_of_key(request.query.get("key", ""))
    if viewer is None:
        raise refuse(401, "that log-in link is not this server's (it changes at each "
                          "start: use the one it printed)")
    response = web.HTTPFound("/")
    console.auth.set_cookie(response, console.auth.log_in(viewer))
    raise response


async def logout(request: web.Request) -> web.Response:
    console = _console(request)
    console.auth.log_out(request)
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    return web.json_response(_console(request).auth.viewer(request).as_json())


# ---------------------------------------------------------------------- live calls

async def calls(request: web.Request) -> web.Response:
    console = _console(request)
    return web.json_response(console.live.snapshot(console.auth.viewer(request)))


async def calls_stream(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    viewer = console.auth.viewer(request)
    response = await _event_stream(request)
    last, sent = "", 0.0
    loop = asyncio.get_running_loop()
    while True:
        data = json.dumps(console.live.snapshot(viewer))
        if data != last or loop.time() - sent >= _CALLS_AT_LEAST_S:
            await _send(response, "calls", data)
            last, sent = data, loop.time()
        await asyncio.sleep(_CALLS_EVERY_S)


async def call(request: web.Request) -> web.Response:
    session, _ = _console(request).call(request)
    return web.json_response({"call": call_row(session),
                              "events": list(session.watch.history)})


async def call_events(request: web.Request) -> web.StreamResponse:
    session, _ = _console(request).call(request)
    response = await _event_stream(request)
    async for event in session.watch.events():
        await _send(response, event["kind"], json.dumps(event))
    return response


async def listen(request: web.Request) -> web.WebSocketResponse:
    """Listen-in: the call's two sides as they happen (session/watch.py's format)."""
    session, _ = _console(request).call(request)
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    listening = session.watch.listen()
    await ws.send_json({"sample_rate": session.spec.audio.sample_rate,
                        "channels": ["caller", "agent"]})

    async def forward() -> None:
        async for item in listening.feed:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)
        await ws.close()  # the call ended

    sender = asyncio.create_task(forward())
    try:
        async for msg in ws:  # the browser says nothing; this notices it leave
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        session.watch.unlisten(listening)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        await ws.close()
    return ws


# ---------------------------------------------------------------------- actions

async def whisper(request: web.Request) -> web.Response:
    console = _console(request)
    session, viewer = console.call(request)
    text = " ".join(str((await _json(request)).get("text", "")).split())
    limit = console.service.rt.settings.console.whisper_max_chars
    if not text:
        raise refuse(400, "type the sentence the agent should say")
    if len(text) > limit:
        raise refuse(413, f"a whisper is at most {limit} characters (this one has "
                          f"{len(text)}): the agent says it as one turn")
    return _take(session, Supervise("whisper", viewer.who, text))


async def transfer(request: web.Request) -> web.Response:
    session, viewer = _console(request).call(request)
    if session.profile.transfer is None:
        raise refuse(409, f"profile {session.profile.name} has no transfer target "
                          "(transfer: in its profile.yaml)")
    return _take(session, Supervise("transfer", viewer.who))


async def end(request: web.Request) -> web.Response:
    session, viewer = _console(request).call(request)
    return _take(session, Supervise("end", viewer.who))


def _take(session: CallSession, action: Supervise) -> web.Response:
    if session.ended is not None or session.control.transferring:
        raise refuse(409, "the call is already ending")
    session.supervise(action)
    return web.json_response({"ok": True}, status=202)


# ---------------------------------------------------------------------- history

async def history(request: web.Request) -> web.Response:
    console = _console(request)
    viewer = console.auth.viewer(request)
    store = console.service.rt.services.records
    if store is None:
        return web.json_response({"records": [], "note": "call records are off"})
    q = request.query
    tenant = q.get("tenant", "") if viewer.operator else (viewer.tenant or "")
    try:
        since, until = (float(q[k]) if q.get(k) else None for k in ("since", "until"))
        limit = min(500, max(1, int(q.get("limit", "50"))))
    except ValueError:
        raise refuse(400, "since and until are unix seconds, limit a whole number") from None
    found = await asyncio.get_running_loop().run_in_executor(
        console.service.rt.executors["records"],
        lambda: store.search(since, until, tenant, q.get("profile", ""), q.get("reason", ""),
                             q.get("q", "")[:200], limit))
    return web.json_response({"records": [_summary(r) for r in found]})


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    said = next((t["caller_text"] for t in rec["turns"] if t["caller_text"]), "")
    return {k: rec.get(k) for k in ("session_id", "call_id", "tenant", "profile", "transport",
                                    "started_at", "ended_at", "duration_s", "reason")} | {
        "turns": sum(1 for t in rec["turns"] if t["turn_id"]),
        "recording": bool(rec.get("recording")), "snippet": said[:120]}


async def record(request: web.Request) -> web.Response:
    return web.json_response(_console(request).record(request))


async def recording(request: web.Request) -> web.FileResponse:
    console = _console(request)
    rec = console.record(request)
    path = recording_path(console.service.rt.settings, rec["session_id"])
    if not rec.get("recording") or not path.is_file():
        raise refuse(404, "this call has no recording (not consented, not enabled for "
                          "its profile or tenant, or past the retention)")
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


# ---------------------------------------------------------------------- plumbing

async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        raise refuse(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise refuse(400, "the body must be a JSON object")
    return body


async def _event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", **_HEADERS})
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, kind: str, data: str) -> None:
    await response.write(f"event: {kind}\ndata: {data}\n\n".encode())


def make_app(service: VoiceAgentService) -> web.Application:
    app = web.Application(middlewares=[json_errors, _secure_headers],
                          client_max_size=_MAX_BODY)
    app[KEY] = Console(service, ConsoleAuth(service.gate, service.rt.settings.console),
                       LiveCalls(service))
    app.add_routes([
        web.get("/", index),
        web.get("/login", login_link),
        web.post("/api/login", login),
        web.post("/api/logout", logout),
        web.get("/api/me", me),
        web.get("/api/calls", calls),
        web.get("/api/calls/stream", calls_stream),
        web.get("/api/calls/{session_id}", call),
        web.get("/api/calls/{session_id}/events", call_events),
        web.get("/api/calls/{session_id}/listen", listen),
        web.post("/api/calls/{session_id}/whisper", whisper),
        web.post("/api/calls/{session_id}/transfer", transfer),
        web.post("/api/calls/{session_id}/end", end),
        web.get("/api/history", history),
        web.get("/api/history/{session_id}", record),
        web.get("/api/history/{session_id}/recording", recording),
        web.static("/static", STATIC),
    ])
    return app


@dataclass
class ConsoleServing:
    runner: web.AppRunner
    url: str
    login_url: str  # with the key made at start when no tenants are configured

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_console(service: VoiceAgentService, host: str, port: int) -> ConsoleServing:
    app = make_app(service)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    url = f"http://{host}:{bound}"
    key = app[KEY].auth.local_key
    return ConsoleServing(runner, url, f"{url}/login?key={key}" if key else "")
