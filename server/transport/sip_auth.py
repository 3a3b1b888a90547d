"""Who may call over SIP, and how a refusal is answered: the accounts of
`telephony.sip.accounts` (digest credentials, source allowlists, the tenant each names),
stateless digest challenges, and the SIP status, phrase and headers for each refusal."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import time
from dataclasses import dataclass

import grpc
from aiosipua import AuthChallenge, SipDigestAuth, build_credentials, parse_auth, stringify_auth

from voxline.config import SipSection
from voxline.transport.gate import ConfigError, Rejected, read_secret

_NONCE_TTL_S = 300.0

_PHRASES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 486: "Busy Here", 488: "Not Acceptable Here",
            500: "Server Internal Error", 503: "Service Unavailable"}
# A refusal's SIP status: by its reason, else by its gRPC code.
_BY_REASON = {"forbidden": 403, "unauthenticated": 403, "tenant_limit": 486,
              "server_limit": 503, "draining": 503}
_BY_CODE = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
            grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
            grpc.StatusCode.DEADLINE_EXCEEDED: 408, grpc.StatusCode.PERMISSION_DENIED: 403,
            grpc.StatusCode.UNAUTHENTICATED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
            grpc.StatusCode.UNAVAILABLE: 503}


class SipRefusal(Rejected):
    """A refusal with its own SIP status (488 for the SDP, 503 with no RTP port...)."""

    def __init__(self, status: int, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(code, message, reason)
        self.status = status


def sip_answer(exc: Rejected) -> tuple[int, str, dict[str, str]]:
    """The status, phrase and headers that refuse an INVITE for `exc`."""
    status = getattr(exc, "status", None) or _BY_REASON.get(exc.reason) \
        or _BY_CODE.get(exc.code, 500)
    headers = {"Warning": f'399 voxline "{quoted(exc.message)}"'}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
    return status, _PHRASES.get(status, "Refused"), headers


def quoted(text: str, limit: int = 200) -> str:
    """Text fit for a quoted header value: one line, no quotes or backslashes."""
    return re.sub(r'[\x00-\x1f\x7f"\\]+', " ", text)[:limit]


@dataclass
class Account:
    tenant: str
    username: str
    password: str
    allow: list[str]


def read_accounts(section: SipSection, tenants: dict) -> list[Account]:
    accounts = []
    for n, a in enumerate(section.accounts):
        where = f"telephony.sip.accounts[{n}]"
        if tenants and a.tenant not in tenants:
            raise ConfigError(f"{where}.tenant: no tenant '{a.tenant}' in auth.tenants")
        if not a.username and not a.allow:
            raise ConfigError(f"{where}: set username (digest) or allow (source addresses), "
                              "or both")
        password = ""
        if a.username:
            password = read_secret(f"{where} (user '{a.username}')", a.password_file,
                                   a.password_env, "password")
        accounts.append(Account(a.tenant, a.username, password, list(a.allow)))
    return accounts


class Digest:
    """Digest challenges (RFC 7616: qop=auth, MD5) with nonces the server can check
    without keeping them: a time and its HMAC under a per-process secret."""

    def __init__(self, realm: str) -> None:
        self.realm = realm
        self._secret = os.urandom(32)

    def _sign(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def challenge(self, stale: bool = False) -> str:
        stamp = f"{int(time.time()):x}"
        params = {"realm": self.realm, "nonce": f"{stamp}.{self._sign(stamp)}",
                  "qop": "auth", "algorithm": "MD5"}
        if stale:
            params["stale"] = "true"
        return stringify_auth(AuthChallenge(scheme="Digest", params=params))

    def check(self, header: str, method: str, accounts: list[Account]
              ) -> Account | str | None:
        """The account whose credentials these are; "stale" for an expired nonce of
        ours, "challenge" for a nonce not ours (this process did not issue it); None
        for credentials refused."""
        creds = parse_auth(header)
        p = creds.params
        account = next((a for a in accounts if a.username == p.get("username")), None)
        if creds.scheme.lower() != "digest" or account is None or p.get("realm") != self.realm:
            return None
        stamp, _, sig = p.get("nonce", "").partition(".")
        if not hmac.compare_digest(sig, self._sign(stamp)):
            return "challenge"
        expected = build_credentials(
            SipDigestAuth(account.username, account.password),
            AuthChallenge("Digest", {"realm": self.realm, "nonce": p["nonce"],
                                     "algorithm": p.get("algorithm", "MD5"),
                                     **({"qop": "auth"} if p.get("qop") else {})}),
            method, p.get("uri", ""), nonce_count=_hex(p.get("nc", "1")), cnonce=p.get("cnonce"))
        if expected is None or not hmac.compare_digest(expected.params["response"],
                                                       p.get("response", "")):
            return None
        if time.time() - _hex(stamp) > _NONCE_TTL_S:
            return "stale"
        return account


def _hex(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        return 0
