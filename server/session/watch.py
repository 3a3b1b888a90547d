"""What a supervisor, and the call's recorder, see of one call: its events as they
happen and the audio of its two sides.

Everything the call sends its gateway passes through `WatchedOutbox`, so the watch sees
exactly what the gateway got (transcripts, agent text, tool calls, turn metrics, audio,
clears) with no hook inside the session's logic; the caller's audio and DTMF come from
the session as it takes them in. The call never waits for a watcher: each watcher has a
bounded, lossy feed, and no audio is decoded while nobody listens or records.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import numpy as np
from google.protobuf.json_format import MessageToDict

from voxline.audio.convert import decode
from voxline.audio.formats import CallAudioFormat
from voxline.streams import Feed, Outbox
from voxline.v1 import voice_agent_pb2 as pb

log = logging.getLogger(__name__)

_HISTORY = 2000  # events a supervisor opening the call late still sees
_FEED_LIMIT = 1000  # events (or audio frames) a slow watcher may fall behind


class AudioSink(Protocol):
    """Takes a call's two sides as they happen (float32 at the call's rate)."""

    def caller(self, pcm: np.ndarray) -> None: ...  # each frame, in call order

    def agent(self, pcm: np.ndarray) -> None: ...  # each chunk as sent to the gateway

    def cleared(self) -> None: ...  # barge-in: what was sent but not yet played is not

    def dtmf(self, duration_ms: int) -> None: ...  # a key press (not to be heard)


CALLER, AGENT = 0, 1  # the side byte that opens each listen-in audio message


class Listening:
    """One listen-in: the call's audio as messages for a WebSocket, bytes: the side
    (CALLER or AGENT) then 16-bit little-endian PCM at the call's rate; the text
    "clear" when the agent's unplayed audio is dropped (barge-in)."""

    def __init__(self) -> None:
        self.feed: Feed[bytes | str] = Feed(_FEED_LIMIT)

    def caller(self, pcm: np.ndarray) -> None:
        self.feed.put(bytes([CALLER]) + pcm16(pcm))

    def agent(self, pcm: np.ndarray) -> None:
        self.feed.put(bytes([AGENT]) + pcm16(pcm))

    def cleared(self) -> None:
        self.feed.put("clear")

    def dtmf(self, duration_ms: int) -> None:
        pass  # DTMF travels as events, never as tones to a listener


def pcm16(pcm: np.ndarray) -> bytes:
    """Samples as the gateway's 16-bit PCM (32768: the scale decode() divides by, so a
    caller's PCM16 comes back exact)."""
    return np.clip(np.round(pcm * 32768.0), -32768, 32767).astype("<i2").tobytes()


class CallWatch:
    def __init__(self, audio: CallAudioFormat) -> None:
        self.format = audio
        self.started = time.time()
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=_HISTORY)
        self._feeds: set[Feed[dict[str, Any]]] = set()
        self.sinks: list[AudioSink] = []
        self.closed = False

    # ------------------------------------------------------------------ what the call does

    def output(self, msg: pb.CallOutput) -> None:
        """One message the call sent its gateway."""
        kind = msg.WhichOneof("payload")
        if kind == "audio":
            if self.sinks:
                pcm = decode(msg.audio.audio, self.format.encoding)
                for sink in self.sinks:
                    sink.agent(pcm)
            return
        if kind == "clear_playback":
            for sink in self.sinks:
                sink.cleared()
        self.event(kind or "empty", **MessageToDict(getattr(msg, kind),
                                                   preserving_proto_field_name=True))

    def caller(self, payload: bytes) -> None:
        """Caller audio as the gateway sent it (the call's encoding)."""
        if self.sinks:
            pcm = decode(payload, self.format.encoding)
            for sink in self.sinks:
                sink.caller(pcm)

    def dtmf(self, duration_ms: int) -> None:
        for sink in self.sinks:
            sink.dtmf(duration_ms)
        self.event("dtmf", duration_ms=duration_ms)  # which key is never shown

    def event(self, kind: str, /, **data: Any) -> None:
        # A message's own "kind" field (SpeechEvent's) is named after the message.
        if "kind" in data:
            data[f"{kind}_kind"] = data.pop("kind")
        event = {**data, "kind": kind, "at": round(time.time() - self.started, 3)}
        self.history.append(event)
        for feed in self._feeds:
            feed.put(event)

    def close(self) -> None:
        self.closed = True
        for sink in self.sinks:
            if isinstance(sink, Listening):
                sink.feed.close()
        for feed in self._feeds:
            feed.close()
        self._feeds.clear()

    # ------------------------------------------------------------------ who watches

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The call's events so far, then each as it happens, until the call ends."""
        feed: Feed[dict[str, Any]] = Feed(_FEED_LIMIT + _HISTORY, self.history)
        if self.closed:
            feed.close()  # the call is over: what it did, and no more
        self._feeds.add(feed)
        try:
            async for event in feed:
                yield event
        finally:
            self._feeds.discard(feed)

    def listen(self) -> Listening:
        listening = Listening()
        if self.closed:
            listening.feed.close()
        self.sinks.append(listening)
        return listening

    def unlisten(self, listening: Listening) -> None:
        self.detach(listening)

    def attach(self, sink: AudioSink) -> None:
        self.sinks.append(sink)

    def detach(self, sink: AudioSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)


class WatchedOutbox:
    """The call's outbox, with every message also shown to its watch."""

    def __init__(self, out: Outbox[pb.CallOutput], watch: CallWatch) -> None:
        self._out, self._watch = out, watch
        self._failed = False

    def put(self, item: pb.CallOutput | None) -> None:
        self._out.put(item)
        if item is None:
            return
        try:
            self._watch.output(item)
        except Exception:  # watching must never break the call
            if not self._failed:
                log.exception("call watch failed; the call goes on unwatched")
            self._failed = True

    async def room(self) -> None:
        await self._out.room()
