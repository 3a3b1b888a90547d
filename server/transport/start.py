"""The contract of a Converse stream's first message: a CallStart checked against the
server's formats, limits and the tenant's profiles, and the errors a stream's messages
end it with."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from voxline.agent.metadata import check_metadata
from voxline.agent.profile import ProfileError
from voxline.audio.formats import AudioFormatError, CallAudioFormat, Encoding
from voxline.errors import ServiceError, invalid
from voxline.runtime import Runtime
from voxline.session.spec import CallSpec
from voxline.transport.gate import Gate
from voxline.v1 import voice_agent_pb2 as pb

log = logging.getLogger(__name__)

_ENCODINGS = {
    pb.AUDIO_ENCODING_PCM16: Encoding.PCM16,
    pb.AUDIO_ENCODING_MULAW: Encoding.MULAW,
    pb.AUDIO_ENCODING_ALAW: Encoding.ALAW,
}


async def check_start(msg: pb.CallInput, runtime: Runtime, gate: Gate, tenant: str
                      ) -> CallSpec:
    """The call's spec, its profile loaded (off the event loop when first asked for);
    ServiceError saying what to fix otherwise."""
    kind = msg.WhichOneof("payload")
    if kind != "start":
        raise invalid(f"the first message of a Converse stream must be `start` (CallStart), "
                      f"got `{kind or 'an empty CallInput'}`")
    start, limits = msg.start, runtime.settings.limits
    if not 1 <= len(start.call_id) <= 128 or not start.call_id.isprintable():
        raise invalid("call_id must be 1 to 128 printable characters")
    encoding = _ENCODINGS.get(start.audio_format.encoding)
    if encoding is None:
        raise invalid(f"unknown audio encoding {start.audio_format.encoding}; "
                      "use AUDIO_ENCODING_PCM16, AUDIO_ENCODING_MULAW or AUDIO_ENCODING_ALAW")
    try:
        audio = CallAudioFormat(encoding, start.audio_format.sample_rate_hz)
        metadata = check_metadata(start.metadata, limits.max_metadata_entries,
                                  limits.max_metadata_key_chars,
                                  limits.max_metadata_value_chars, limits.max_metadata_bytes)
    except (AudioFormatError, ValueError) as exc:
        raise invalid(str(exc)) from exc
    eot = start.end_of_turn_silence_ms or runtime.settings.turn.end_of_turn_silence_ms
    if not 200 <= eot <= 3000:
        raise invalid(f"end_of_turn_silence_ms={eot} is outside 200..3000")
    profile = start.agent_profile or runtime.settings.default_profile
    await load_profile(runtime, gate, tenant, profile)
    return CallSpec(start.call_id, audio, profile, metadata, eot, tenant,
                    record=start.record and _opted_in(runtime, gate, tenant, profile))


_YES = frozenset({"yes", "true", "1"})


def consented(value: object) -> bool:
    """A telephony parameter's recording consent (`yes`, `true` or `1`, any case; a
    JSON true too): anything else, or none, is no consent."""
    return value is True or (isinstance(value, str) and value.strip().lower() in _YES)


def _opted_in(runtime: Runtime, gate: Gate, tenant: str, profile: str) -> bool:
    """Whether the call's profile or tenant records consented calls."""
    own = gate.tenants.get(tenant)
    return runtime.agent(profile).profile.recording or (own is not None and own.recording)


async def load_profile(runtime: Runtime, gate: Gate, tenant: str, profile: str) -> None:
    """Load a profile the tenant may use. A tenant hears only that the name is unknown:
    not which profiles exist, nor that one it may not use does."""
    unknown = ServiceError(grpc.StatusCode.NOT_FOUND,
                           f"unknown agent profile {profile[:64]!r}")
    if not gate.may_use(tenant, profile):
        raise unknown
    try:
        await runtime.load_agent(profile)
    except ProfileError as exc:
        if gate.tenants:
            log.info("tenant %s: profile %r: %s", tenant, profile[:64], exc)
            raise unknown from exc
        raise ServiceError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc


def oversized(msg: pb.CallInput, limit: int) -> ServiceError | None:
    size = msg.ByteSize()
    if size <= limit:
        return None
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"a CallInput of {size} bytes is larger than max ({limit} bytes, "
                        "limits.max_message_bytes); send audio in frames of 10-200 ms")


def unparsable(exc: DecodeError) -> ServiceError:
    return invalid(f"a message is not a valid voxline.v1.CallInput ({exc}); send "
                   "serialized CallInput messages")


async def checked(requests: AsyncIterator[pb.CallInput], limit: int
                  ) -> AsyncIterator[pb.CallInput]:
    """The stream's messages; ServiceError for one too big or not a CallInput."""
    try:
        async for msg in requests:
            if (too_big := oversized(msg, limit)) is not None:
                raise too_big
            yield msg
    except DecodeError as exc:
        raise unparsable(exc) from exc
