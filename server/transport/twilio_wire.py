"""The JSON messages of Twilio Media Streams and of Telnyx media streaming, which speak
the same protocol in two spellings (Twilio camelCase: `streamSid`, `sequenceNumber`,
`mediaFormat`; Telnyx snake_case: `stream_id`, `sequence_number`, `media_format`),
and who may open a stream. Here are the parts that differ between the two and
everything that decodes or builds a message, so the adapter (twilio.py) deals in
calls, not spellings: which platform a stream comes from, the call and audio format
its `start` names, a media payload's audio, the messages going back, and the upgrade
request's credentials (Twilio's signature, or the project's API key)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field

import grpc
import numpy as np
from websockets.datastructures import Headers
from websockets.http11 import Request

from voxline.audio.formats import AudioFormatError, CallAudioFormat, Encoding
from voxline.config import TwilioSection
from voxline.transport.gate import ConfigError, Gate, Rejected, read_secret
from voxline.transport.wire import allowed, listener_tenant

# WebSocket close codes (RFC 6455 section 7.4.1) for the ways a stream breaks the protocol
UNSUPPORTED = 1003  # a binary frame: these streams are JSON text only
INVALID_DATA = 1007  # not JSON, bad base64, an odd number of PCM bytes
POLICY = 1008  # a message that is not a known event, a frame over the size limit
TOO_BIG = 1009
TRY_LATER = 1013

PROFILE_PARAMETER = "profile"  # the custom parameter that names the agent profile
RECORD_PARAMETER = "record"  # yes/true/1: the caller consented to recording


class WireError(Exception):
    """A message that breaks the stream's protocol, and the close code it earns."""

    def __init__(self, close_code: int, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.message = message


@dataclass(frozen=True)
class Dialect:
    name: str  # "twilio" or "telnyx"
    stream_key: str  # the stream's id, on every message
    seq_key: str  # the message counter, on every message but `connected`
    call_keys: tuple[str, ...]  # where `start` names the call (the first one present)
    format_key: str
    rate_key: str
    params_key: str


TWILIO = Dialect("twilio", "streamSid", "sequenceNumber", ("callSid", "streamSid"),
                 "mediaFormat", "sampleRate", "customParameters")
TELNYX = Dialect("telnyx", "stream_id", "sequence_number", ("call_control_id", "call_session_id"),
                 "media_format", "sample_rate", "custom_parameters")

# The encodings each platform names in `start`, as the call's codec (Telnyx's L16 is
# big-endian on the wire; the call runs little-endian PCM16).
_ENCODINGS = {"audio/x-mulaw": Encoding.MULAW, "pcmu": Encoding.MULAW,
              "audio/x-alaw": Encoding.ALAW, "pcma": Encoding.ALAW, "l16": Encoding.PCM16}


def parse(raw: str | bytes, limit: int) -> dict:
    """One message as a JSON object with an `event`, or WireError."""
    if isinstance(raw, bytes):
        raise WireError(UNSUPPORTED, f"binary frame of {len(raw)} bytes: media streams carry "
                        "JSON text messages only")
    if len(raw) > limit:  # websockets bounds frames too; this is the call's own limit
        raise WireError(TOO_BIG, f"message of {len(raw)} characters is over the "
                        f"{limit}-byte limit (limits.max_message_bytes)")
    try:
        msg = json.loads(raw)
    except ValueError:
        raise WireError(INVALID_DATA, f"not a JSON message: {raw[:40]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise WireError(POLICY, "a message must be a JSON object with an `event` name")
    return msg


def detect(msg: dict) -> Dialect | None:
    """Which platform sent this message, from its spelling (None: it does not say)."""
    if "streamSid" in msg or "sequenceNumber" in msg or "protocol" in msg:
        return TWILIO
    if "stream_id" in msg or "sequence_number" in msg:
        return TELNYX
    return None


@dataclass
class StreamStart:
    dialect: Dialect
    stream_id: str
    call_id: str
    audio: CallAudioFormat
    big_endian: bool  # the wire's PCM16 is big-endian (Telnyx L16)
    params: dict[str, str] = field(default_factory=dict)


def parse_start(msg: dict, dialect: Dialect) -> StreamStart:
    start = _obj(msg, "start")
    stream_id = str(msg.get(dialect.stream_key) or start.get(dialect.stream_key) or "")
    call_id = next((str(start[k]) for k in dialect.call_keys if start.get(k)), stream_id)
    if not call_id:
        raise WireError(POLICY, f"`start` names no call ({' or '.join(dialect.call_keys)})")
    fmt = start.get(dialect.format_key) or {}
    if not isinstance(fmt, dict):
        raise WireError(POLICY, f"start.{dialect.format_key} must be an object")
    name = str(fmt.get("encoding") or ("audio/x-mulaw" if dialect is TWILIO else "PCMU"))
    encoding = _ENCODINGS.get(name.lower())
    if encoding is None:
        raise WireError(POLICY, f"unsupported media encoding {name[:32]!r}: use PCMU, PCMA "
                        "or L16")
    try:
        rate = int(fmt.get(dialect.rate_key) or 8000)
        channels = int(fmt.get("channels") or 1)
        audio = CallAudioFormat(encoding, rate)
    except (TypeError, ValueError, AudioFormatError) as exc:
        raise WireError(POLICY, f"start.{dialect.format_key}: {exc}") from None
    if channels != 1:
        raise WireError(POLICY, f"{channels}-channel media: only mono is supported")
    return StreamStart(dialect, stream_id, call_id[:128], audio,
                       encoding is Encoding.PCM16, _params(start.get(dialect.params_key)))


def _params(raw: object) -> dict[str, str]:
    """Custom parameters: Twilio sends an object; a list of {name, value} is read too."""
    if raw is None:
        return {}
    if isinstance(raw, list):
        try:
            raw = {p["name"]: p.get("value", "") for p in raw}
        except (TypeError, KeyError):
            raise WireError(POLICY, "custom parameters: a list must hold {name, value} "
                            "objects") from None
    if not isinstance(raw, dict):
        raise WireError(POLICY, "custom parameters must be an object of names and values")
    params = {}
    for key, value in raw.items():
        if isinstance(value, dict | list):
            raise WireError(POLICY, f"custom parameter {str(key)[:40]!r} is not a plain value")
        params[str(key)] = "" if value is None else str(value)
    return params


def sequence(msg: dict, dialect: Dialect) -> int | None:
    """A media frame's place in the stream: its chunk number (counting media only,
    so other events leave no gaps), else the message's sequence number."""
    media = msg.get("media")
    value = (media.get("chunk") if isinstance(media, dict) else None) or msg.get(dialect.seq_key)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if not 0 <= number < 1 << 63:
        raise WireError(POLICY, f"media chunk number {str(value)[:20]!r} is not a number "
                        "from 0 to 2^63")
    return number


def payload(msg: dict, start: StreamStart, max_frame_ms: int) -> bytes | None:
    """A media message's audio in the call's encoding (None: another track's audio)."""
    media = _obj(msg, "media")
    if media.get("track", "inbound") not in ("inbound", "inbound_track"):
        return None  # Telnyx's both_tracks also streams the agent's side back
    text = media.get("payload")
    if not isinstance(text, str) or not text:
        raise WireError(POLICY, "media message without a payload")
    # Bounded before decoding: base64 takes 4 characters for each 3 bytes.
    most = start.audio.bytes_for_ms(max_frame_ms)
    if len(text) > (most + 2) // 3 * 4:
        raise WireError(POLICY, f"media payload of {len(text)} base64 characters is over "
                        f"{max_frame_ms} ms of audio (limits.max_frame_ms)")
    try:
        audio = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(INVALID_DATA, "media payload is not valid base64") from None
    if start.audio.encoding is Encoding.PCM16:
        if len(audio) % 2:
            raise WireError(INVALID_DATA, f"L16 payload of {len(audio)} bytes: 16-bit samples "
                            "take 2 bytes each")
        if start.big_endian:
            audio = swap16(audio)
    if not audio:
        raise WireError(POLICY, "empty media payload")
    return audio


def swap16(audio: bytes) -> bytes:
    """16-bit samples between big- and little-endian."""
    return np.frombuffer(audio, dtype="<i2").byteswap().tobytes()


def digit(msg: dict) -> str:
    value = _obj(msg, "dtmf").get("digit")
    if not isinstance(value, str) or len(value) != 1 or value not in "0123456789*#ABCD":
        raise WireError(POLICY, "dtmf.digit must be one of 0-9, *, #, A-D")
    return value


def mark_name(msg: dict) -> str:
    name = _obj(msg, "mark").get("name")
    if not isinstance(name, str):
        raise WireError(POLICY, "mark message without a name")
    return name


def _obj(msg: dict, key: str) -> dict:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise WireError(POLICY, f"`{msg['event']}` message without its `{key}` object")
    return value


# ---------------------------------------------------------------- back to the platform


def media_message(start: StreamStart, audio: bytes) -> str:
    if start.big_endian:
        audio = swap16(audio)
    return _out(start, "media", media={"payload": base64.b64encode(audio).decode()})


def mark_message(start: StreamStart, name: str) -> str:
    return _out(start, "mark", mark={"name": name})


def clear_message(start: StreamStart) -> str:
    return _out(start, "clear")


def _out(start: StreamStart, event: str, **body: object) -> str:
    # Twilio wants the streamSid on every message back; Telnyx's documented commands
    # carry none (the socket is the stream).
    head = {"event": event}
    if start.dialect is TWILIO:
        head["streamSid"] = start.stream_id
    return json.dumps({**head, **body}, separators=(",", ":"))


# ---------------------------------------------------------------- Twilio's signature


def signature(auth_token: str, url: str) -> str:
    """X-Twilio-Signature of a request without a body (a WebSocket upgrade is a GET):
    base64 of HMAC-SHA1 over the full URL, query included, keyed by the auth token."""
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# ---------------------------------------------------------------- who may connect


def read_accounts(gate: Gate, section: TwilioSection) -> list[tuple[str, str]]:
    """(tenant, auth token) of each configured account, read once at start."""
    out = []
    for i, account in enumerate(section.accounts):
        where = f"telephony.twilio.accounts[{i}]"
        tenant = account.tenant or section.tenant
        if gate.tenants and tenant not in gate.tenants:
            raise ConfigError(f"{where}: no tenant '{tenant}' in auth.tenants")
        out.append((tenant, read_secret(where, account.auth_token_file,
                                        account.auth_token_env, "auth_token")))
    return out


def upgrade_tenant(gate: Gate, section: TwilioSection, accounts: list[tuple[str, str]],
                   request: Request, peer: str) -> str:
    """The tenant an upgrade request's stream counts against, or Rejected: a Twilio
    signature names its account's; a project API key (`x-api-key`, or `Authorization:
    Bearer`, for streams that cannot be signed, like Telnyx's) its tenant; otherwise,
    only without accounts, the listener's tenant."""
    if not allowed(peer, section.allow):
        raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                       f"{peer} is not in telephony.twilio.allow", "forbidden")
    headers: Headers = request.headers
    given = headers.get("X-Twilio-Signature", "")
    if given and accounts:
        base = section.public_url.rstrip("/") or f"wss://{headers.get('Host', '')}"
        url = base + request.path
        match = None
        for tenant, token in accounts:  # every one, in constant time: timing tells nothing
            if hmac.compare_digest(signature(token, url).encode(), given.encode()):
                match = tenant
        if match is None:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                           f"X-Twilio-Signature does not match {url} for any configured "
                           "account", "forbidden")
        return match
    if gate.tenants and ("x-api-key" in headers or "authorization" in headers):
        return gate.authenticate((k.lower(), v) for k, v in headers.raw_items())
    if accounts:
        raise Rejected(grpc.StatusCode.UNAUTHENTICATED,
                       "missing X-Twilio-Signature (or an API key)", "unauthenticated")
    return listener_tenant("twilio", section, gate, peer)
