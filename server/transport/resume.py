"""Resuming a call on a new stream: the CallStart's resume_token names a call whose
stream broke; the new stream takes it over (its state claimed in the store, by the
same tenant, within the resume window) and the call goes on as it was."""

from __future__ import annotations

import logging

import grpc

from voxline.errors import ServiceError
from voxline.runtime import Runtime
from voxline.session.spec import CallSpec
from voxline.store import CallState, ConversationStore, StoreError
from voxline.transport.gate import Gate
from voxline.transport.start import load_profile
from voxline.v1 import voice_agent_pb2 as pb

log = logging.getLogger(__name__)


async def take_over(store: ConversationStore, rt: Runtime, gate: Gate, spec: CallSpec,
                    start: pb.CallStart) -> CallState:
    """The state of the call `start.resume_token` names, now this stream's (`spec`
    takes its id, profile and metadata); ServiceError when it cannot be resumed."""
    window = rt.settings.store.resume_window_s
    unknown = ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"resume_token is unknown or expired (a call can be resumed for {window:g} s "
        "after its stream breaks, by the same tenant); start a new call without "
        "resume_token")
    try:
        state = await store.peek(start.resume_token)
        # Another tenant's token is treated as unknown: it reveals nothing.
        if state is None or state.tenant != spec.tenant:
            raise unknown
        await load_profile(rt, gate, spec.tenant, state.profile)
        state = await store.claim(start.resume_token, spec.session_id,
                                  rt.settings.limits.max_call_s + window)
    except StoreError as exc:
        rt.metrics.store_errors.labels("resume").inc()
        raise ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            f"cannot resume: the conversation store is unreachable ({exc}); retry, or "
            "start a new call without resume_token") from exc
    if state is None:  # expired between the two steps
        raise unknown
    # The call goes on as it was; only the audio format is the new stream's own.
    spec.call_id, spec.profile, spec.metadata = state.call_id, state.profile, state.metadata
    spec.end_of_turn_ms = start.end_of_turn_silence_ms or state.end_of_turn_ms
    rt.metrics.calls_resumed.inc()
    log.info("call %s: resuming after session %s", state.call_id,
             state.sessions[-1] if state.sessions else "?")
    return state
