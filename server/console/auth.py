"""Who is looking at the console, and what they may see.

A supervisor logs in with a key the server already knows: a tenant's (that tenant's
calls and records only) or an operator's (everything). The log-in becomes a session
cookie (`HttpOnly`, `SameSite=Strict`, random, held only in memory, expiring after
console.session_minutes); an API client may send the key itself as a bearer token
instead. A request that changes something (POST, the listen-in upgrade) and rides on
the cookie must come from the console's own origin: the browser's Origin and
Sec-Fetch-Site headers say where it was made.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from voxline.config import ConsoleSection
from voxline.console.errors import refuse
from voxline.transport.gate import Gate

COOKIE = "voxline_console"
_MAX_SESSIONS = 10000  # log-ins held at once; the oldest go first


@dataclass(frozen=True)
class Viewer:
    who: str  # written into records beside what they did
    tenant: str | None  # None: an operator, who sees every tenant
    expires: float = 0.0

    @property
    def operator(self) -> bool:
        return self.tenant is None

    def may_see(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant

    def as_json(self) -> dict[str, object]:
        return {"who": self.who, "tenant": self.tenant, "operator": self.operator}


class ConsoleAuth:
    def __init__(self, gate: Gate, cfg: ConsoleSection) -> None:
        self.gate = gate
        self.cfg = cfg
        self._sessions: dict[str, Viewer] = {}
        # No tenants configured (a demo, a laptop): a key made now, shown once at start.
        self.local_key = "" if gate.tenants else secrets.token_urlsafe(24)

    def viewer_of_key(self, key: str, name: str = "") -> Viewer | None:
        """The viewer a key makes, or None when it is no key the server knows."""
        name = " ".join(name.split())[:64]
        if self.local_key:
            if not secrets.compare_digest(key.encode(), self.local_key.encode()):
                return None
            return Viewer(name or "operator", None)
        tenant = self.gate.identify(key)
        if tenant is None:
            return None
        who = f"{name} ({tenant})" if name else tenant
        return Viewer(who, None if self.gate.is_operator(tenant) else tenant)

    def log_in(self, viewer: Viewer) -> str:
        if len(self._sessions) >= _MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        token = secrets.token_urlsafe(32)
        expires = time.time() + self.cfg.session_minutes * 60
        self._sessions[token] = Viewer(viewer.who, viewer.tenant, expires)
        return token

    def log_out(self, request: web.Request) -> None:
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)

    def set_cookie(self, response: web.StreamResponse, token: str) -> None:
        response.set_cookie(COOKIE, token, max_age=int(self.cfg.session_minutes * 60),
                            path="/", httponly=True, samesite="Strict",
                            secure=self.cfg.secure_cookie)

    def viewer(self, request: web.Request) -> Viewer:
        """The request's viewer; 401 without a valid log-in, 403 for a cross-site
        request riding on the cookie."""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            viewer = self.viewer_of_key(header[7:].strip())
            if viewer is None:
                raise refuse(401, "API key not recognised")
            return viewer
        token = request.cookies.get(COOKIE)
        if not token:
            raise refuse(401, "log in first: POST /api/login with your key, or send it as "
                              "'Authorization: Bearer KEY'")
        viewer = self._sessions.get(token)
        if viewer is None or viewer.expires < time.time():
            self._sessions.pop(token, None)
            raise refuse(401, "your session has expired or was ended: log in again")
        if request.method != "GET" or request.headers.get("Upgrade", "").lower() == "websocket":
            check_same_origin(request)
        return viewer


def check_same_origin(request: web.Request) -> None:
    """Refuse a request made by another site's page (403)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise refuse(403, "cross-site request refused: use the console's own page")
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise refuse(403, f"cross-site request from {origin} refused: use the console's "
                          "own page")
