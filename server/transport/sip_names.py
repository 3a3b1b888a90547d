"""What SIP's names mean for a call: its Call-ID as the call's id, the From and To
users as caller metadata, and the agent's transfer target as a URI for a REFER."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote, unquote

from aiosipua import IncomingCall, parse_uri

_PHONE = re.compile(r"\+?[0-9][0-9()./ -]*")


def call_id_of(sip_call_id: str) -> str:
    if 1 <= len(sip_call_id) <= 128 and sip_call_id.isprintable():
        return sip_call_id
    return "sip-" + hashlib.sha256(sip_call_id.encode(errors="replace")).hexdigest()[:32]


def call_metadata(call: IncomingCall, limits, profile: str) -> dict[str, str]:
    """Who calls whom, within the metadata bounds (cut, never refused for length); the
    To user is left out when it only named the agent `profile`."""
    def user(addr) -> str:
        return unquote(addr.uri.user or "") if addr is not None and addr.uri else ""

    # Not the Call-ID: it is the call's id already, and a random token in the prompt is
    # something a small LLM reads out (seen: SmolLM2 answering with the Call-ID).
    invite = call.invite
    callee = user(invite.to_addr)
    items = [("caller", user(invite.from_addr)), ("callee", "" if callee == profile else callee)]
    out: dict[str, str] = {}
    total = 0
    for key, value in items[:limits.max_metadata_entries]:
        value = value[:limits.max_metadata_value_chars]
        size = len(key.encode()) + len(value.encode())
        if not value or len(key) > limits.max_metadata_key_chars \
                or total + size > limits.max_metadata_bytes:
            continue
        out[key] = value
        total += size
    return out


def refer_uri(target: str, call: IncomingCall) -> str:
    """The transfer target as a URI: a SIP or tel URI as it is, a number as tel:, any
    other name (a queue) as the user part of a SIP URI on the Request-URI's host."""
    if re.match(r"(?i)(sips?|tel):", target):
        return target
    if _PHONE.fullmatch(target):
        return "tel:" + re.sub(r"[^0-9+]", "", target)
    try:
        domain = parse_uri(call.invite.uri).host or call.source_addr[0]
    except Exception:
        domain = call.source_addr[0]
    return f"sip:{quote(target, safe='-_.!~*()&=+$,;?/')}@{domain}"
