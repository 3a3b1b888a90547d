"""The telephony listeners: calls straight from a PBX, SIP trunk or CCaaS platform."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from voxline.config.base import Section


class Listener(Section):
    """One telephony listener (off while `port` is unset; 0: any free port). Its calls
    count against `tenant` when the protocol's own credentials name none, and run
    `profile` when the call does not pick one ("": default_profile)."""

    port: int | None = Field(None, ge=0, le=65535, description=(
        "Port of the listener; null: off, 0: any free port (printed at start)."))
    host: str = Field("", description="Address the listener binds; \"\": server.host.")
    profile: str = Field("", description=(
        "Agent profile of the calls that do not pick one; \"\": default_profile."))
    tenant: str = Field("", description=(
        "Tenant the calls count against when the protocol's own credentials name none. "
        "With tenants configured it must be one of them, and \"\" refuses such calls."))
    allow: list[str] = Field([], description=(
        "Source addresses allowed to connect (CIDR blocks, e.g. 10.0.0.0/8); empty: any."))


class SipAccount(Section):
    """Who may send INVITEs for a tenant: digest credentials, a source allowlist, or
    both (an INVITE must pass every check its account sets)."""

    tenant: str = Field("", description=(
        "Tenant the account's calls count against (with tenants configured, one of them)."))
    username: str = Field("", description=(
        "Digest user name; \"\": no digest, the allowlist alone admits (then `allow` must "
        "be set)."))
    password_env: str = Field("", description=(
        "Environment variable holding the digest password; set it or password_file when "
        "`username` is set."))
    password_file: Path | None = Field(None, description=(
        "File holding the digest password; it wins over password_env when both are set."))
    allow: list[str] = Field([], description=(
        "Source addresses the account accepts INVITEs from (CIDR blocks); empty: any."))


class SipSection(Listener):
    """SIP trunks and PBXs: INVITEs over UDP and TCP (one port number for both), each
    call's audio over RTP. The profile is the Request-URI's user part, else
    `profile_header`, else the listener's `profile`."""

    tcp: bool = Field(True, description="Listen on TCP beside UDP, on the same port.")
    rtp_port_min: int = Field(20000, ge=1024, le=65534, description=(
        "Lowest RTP port for the calls' media (even ports; one per call)."))
    rtp_port_max: int = Field(20999, ge=1024, le=65534, description=(
        "Highest RTP port for the calls' media; it must be above rtp_port_min."))
    public_ip: str = Field("", description=(
        "The address put in SDP and Contact when the server is behind NAT; \"\": `host` "
        "when it is a specific address, else the local address on the route to the "
        "caller."))
    profile_header: str = Field("X-Voxline-Profile", description=(
        "The header that names the agent profile when the Request-URI's user part does "
        "not (the user part wins when it names a profile)."))
    transfer: Literal["refer", "bye"] = Field("refer", description=(
        "How the agent's transfer reaches the caller's side: `refer`, a REFER to the "
        "target; `bye`, a BYE carrying the target in a Reason header, for a PBX that "
        "transfers on its own."))
    accounts: list[SipAccount] = Field([], description=(
        "Who may send INVITEs; none: the listener's `tenant` and `allow` decide."))
    realm: str = Field("voxline", description="Digest realm in 401 challenges.")
    jitter_frames: int = Field(2, ge=0, le=8, description=(
        "Caller frames the jitter buffer holds back to put late packets in order (each "
        "adds 20 ms before the call hears the caller); a gap it cannot fill in that time "
        "is concealed as lost."))
    symmetric_rtp: bool = Field(False, description=(
        "Send RTP where the caller's packets come from rather than where its SDP says "
        "(callers behind NAT); while off, a forged packet cannot redirect a call's audio."))


class TwilioAccount(Section):
    """A Twilio (or Telnyx) account whose streams are checked by X-Twilio-Signature."""

    tenant: str = Field("", description=(
        "Tenant the account's streams count against; \"\": the listener's `tenant`."))
    auth_token_env: str = Field("", description=(
        "Environment variable holding the account's auth token (the signature's key); set "
        "it or auth_token_file."))
    auth_token_file: Path | None = Field(None, description=(
        "File holding the account's auth token; it wins over auth_token_env when both are "
        "set."))


class TwilioSection(Listener):
    """Twilio Media Streams and Telnyx media streaming on one WebSocket listener. A
    stream is admitted by an X-Twilio-Signature matching an account's auth token, or by
    a tenant's API key; without accounts, by the listener's `tenant` and `allow`."""

    public_url: str = Field("", description=(
        "The wss:// URL the platform is told to connect to (the signature covers it); "
        "\"\": wss:// and the request's Host header."))
    accounts: list[TwilioAccount] = Field([], description=(
        "The accounts whose signatures are accepted."))


class AudioSocketSection(Listener):
    """Asterisk AudioSocket: calls that Asterisk's `AudioSocket()` dialplan application
    (or the `AudioSocket/` channel) streams in over TCP."""

    uuid_profiles: dict[str, str] = Field({}, description=(
        "Call UUID prefix -> agent profile (the longest matching prefix wins; else "
        "`profile`)."))
    uuid_timeout_s: float = Field(5.0, gt=0, le=60, description=(
        "A connection must send its call UUID (and then its first audio) within this many "
        "seconds."))
    record: bool = Field(False, description=(
        "AudioSocket carries no per-call parameters: true says the PBX's dialplan has the "
        "caller's consent to recording for every call on this port (recorded when the "
        "profile or tenant opts in too)."))
    max_pending: int = Field(64, ge=1, le=10000, description=(
        "Connections that have not yet become calls (no UUID and first audio frame yet) "
        "this listener holds at once; one more is hung up at once and counted as "
        "`pending_limit`. With each one's frames bounded too, what unadmitted "
        "connections can hold is bounded."))


class VonageSection(Listener):
    """Vonage Voice API WebSockets: calls that an NCCO `connect` action with a
    `websocket` endpoint streams in."""

    connect_timeout_s: float = Field(5.0, gt=0, le=60, description=(
        "A connection must send websocket:connected within this many seconds."))


class TelephonySection(Section):
    """Calls that come straight from a PBX, SIP trunk or CCaaS platform, each protocol
    on its own port, all served by the same call sessions as gRPC."""

    sip: SipSection = Field(SipSection(), description="SIP and RTP (PBXs, SIP trunks).")
    twilio: TwilioSection = Field(TwilioSection(), description=(
        "Twilio Media Streams and Telnyx media streaming (WebSocket)."))
    audiosocket: AudioSocketSection = Field(AudioSocketSection(), description=(
        "Asterisk AudioSocket (TCP)."))
    vonage: VonageSection = Field(VonageSection(), description=(
        "Vonage Voice API WebSockets."))
