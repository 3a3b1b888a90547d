"""The agent's voice on one call: synthesis, pacing, clearing on barge-in, and the
filler that keeps a caller from waiting in silence.

Fixed phrases are spoken from their audio rendered at load, never through TTS; any
other clause goes to TTS on its worker threads, each chunk within faults.tts_timeout_s
(a clause that fails is replaced by the apology). Audio goes to the gateway at most
`playback.lead_ms` ahead of where its playback is, so a barge-in's clear has little
to throw away; one piece of audio goes out at a time, so a filler never interleaves
with a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import numpy as np

from voxline.agent.agent import AgentKit
from voxline.audio.convert import OutboundAudio
from voxline.runtime import Runtime
from voxline.session.ledger import CallLedger
from voxline.session.spec import AgentTurn, CallSpec
from voxline.session.watch import WatchedOutbox
from voxline.v1 import voice_agent_pb2 as pb
from voxline.workers import iterate_in_thread, timed

log = logging.getLogger(__name__)


class Speaker:
    def __init__(self, runtime: Runtime, spec: CallSpec, kit: AgentKit,
                 out: WatchedOutbox, ledger: CallLedger) -> None:
        self.rt = runtime
        self.spec = spec
        self.kit = kit
        self.tts = kit.tts or runtime.tts
        self._out = out
        self.ledger = ledger
        self.faults = runtime.settings.faults
        self.playback = runtime.settings.playback
        self.play_end = 0.0  # perf_counter when the audio sent so far will have played
        self._sending = asyncio.Lock()

    def emit(self, **payload: object) -> None:
        self._out.put(pb.CallOutput(**payload))

    def _outbound(self) -> OutboundAudio:
        return OutboundAudio(self.spec.audio, self.tts.sample_rate, self.playback.chunk_ms)

    @property
    def playing(self) -> bool:
        return self.play_end > time.perf_counter()

    async def until_played(self) -> None:
        """The caller has heard what was sent (estimated from the audio's length)."""
        await asyncio.sleep(max(0.0, self.play_end - time.perf_counter()))

    def clear(self, turn: AgentTurn) -> None:
        """Barge-in: nothing more of `turn` is played."""
        turn.cancelled = True
        if turn.chunks:
            # Tell the gateway first: nothing of this turn may be played any more.
            self.emit(clear_playback=pb.ClearPlayback(turn_id=turn.turn_id))
        now = time.perf_counter()
        # What the caller heard: what the gateway said it played, else what was sent
        # less what cannot have played yet.
        unplayed_ms = max(0.0, self.play_end - now) * 1000
        turn.heard_ms = turn.played_ms if turn.played_ms is not None \
            else max(0.0, turn.audio_ms - unplayed_ms)
        self.play_end = now

    async def speak(self, turn: AgentTurn, texts: AsyncIterator[str]) -> None:
        """Speak each text as soon as it is ready, while the next is still being
        written (the agent runs on its own task)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def think() -> None:
            try:
                async for text in texts:
                    queue.put_nowait(text)
            finally:
                queue.put_nowait(None)

        async def speak() -> None:
            out = self._outbound()
            failed = False
            while (text := await queue.get()) is not None:
                if failed:
                    continue  # the apology was said; the rest of the reply is dropped
                self.ledger.tts_text(text)
                async with self._sending:
                    said = await self._synthesize(turn, text, out)
                turn.spoken.append(said)
                turn.clause_ends.append(turn.audio_ms + out.pending_ms)
                failed = said != text
            async with self._sending:
                await self._send_all(turn, out.push(np.zeros(0, np.float32), last=True))

        async with asyncio.TaskGroup() as tg:
            tg.create_task(think())
            tg.create_task(speak())

    async def _send_all(self, turn: AgentTurn, chunks: list[bytes]) -> None:
        for chunk in chunks:
            await self._send_audio(turn, chunk)

    async def _synthesize(self, turn: AgentTurn, text: str, out: OutboundAudio) -> str:
        """Speak `text` and return what was said: `text`, or if TTS fails or stalls, the
        apology."""
        asked = time.perf_counter()
        spec = turn.speculation
        if spec is not None and spec.first_audio is not None and text == spec.first_say:
            try:
                prepared = await spec.first_audio  # synthesised while the caller paused
            except Exception:
                prepared = None  # synthesise it now, as any clause
            if prepared is not None:
                # What the reply waited for it: 1 ms when it was ready in the pause.
                turn.tts_first_chunk_ms = turn.tts_first_chunk_ms or max(
                    1, int((time.perf_counter() - asked) * 1000))
                for samples in prepared:
                    await self._send_all(turn, out.push(samples))
                return text
        with self.ledger.span("tts", **{"voxline.characters": len(text)}):
            try:
                async with contextlib.aclosing(self.audio(text)) as audio:
                    async for samples in audio:
                        if not turn.tts_first_chunk_ms:
                            turn.tts_first_chunk_ms = int((time.perf_counter() - asked) * 1000)
                        await self._send_all(turn, out.push(samples))
                return text
            except Exception as exc:
                log.error("call %s: TTS failed: %r", self.spec.call_id, exc)
                self.ledger.fallback(turn, "tts_timeout" if isinstance(exc, TimeoutError)
                                     else "tts_error")
        said = self.kit.profile.fallback.llm_error  # pre-rendered, as every fixed phrase
        self.emit(agent_text=pb.AgentText(text=said, turn_id=turn.turn_id))
        await self._send_all(turn, out.push(self.kit.rendered[said]))
        return said

    async def audio(self, text: str) -> AsyncIterator[np.ndarray]:
        """A clause's audio: a fixed phrase as rendered at load, anything else from TTS
        on its worker thread, each chunk within faults.tts_timeout_s (TimeoutError
        otherwise)."""
        if text in self.kit.rendered:
            yield self.kit.rendered[text]
            return
        chunks = timed(iterate_in_thread(lambda: self.tts.synthesize(text),
                                         self.rt.executors["tts"]), self.faults.tts_timeout_s)
        async with contextlib.aclosing(chunks):
            async for samples in chunks:
                yield samples

    async def audio_all(self, text: str) -> list[np.ndarray]:
        """All of a clause's audio, for a speculative reply."""
        async with contextlib.aclosing(self.audio(text)) as audio:
            return [samples async for samples in audio]

    async def fill_silence(self, turn: AgentTurn) -> None:
        """While the turn is being answered, never leave the caller in silence longer
        than max_silence_ms (from the end of their speech, then from the end of the
        last audio sent): say the profile's filler phrases in turn, pre-rendered, so no
        model stands in the way."""
        fillers = self.kit.profile.fallback.filler
        limit = self.faults.max_silence_ms / 1000
        silent_since = time.perf_counter() - turn.endpoint_ms / 1000
        n = 0
        while fillers and not turn.cancelled:
            wake = max(self.play_end, silent_since) + limit
            await asyncio.sleep(max(0.0, wake - time.perf_counter()))
            async with self._sending:  # after the sentence being spoken, if any
                if turn.cancelled or self.play_end + limit > time.perf_counter() + 0.05:
                    continue  # audio went out meanwhile: the silence starts again
                phrase = fillers[n % len(fillers)]
                n += 1
                self.ledger.fallback(turn, "silence_filler")
                self.emit(agent_text=pb.AgentText(text=phrase, turn_id=turn.turn_id))
                out = self._outbound()
                await self._send_all(turn, [*out.push(self.kit.rendered[phrase]),
                                            *out.push(np.zeros(0, np.float32), last=True)])

    async def _send_audio(self, turn: AgentTurn, chunk: bytes) -> None:
        wait = self.play_end - time.perf_counter() - self.playback.lead_ms / 1000
        if wait > 0:
            await asyncio.sleep(wait)
        await self._out.room()  # a gateway that stops reading holds its own call back
        if turn.cancelled:
            return
        now = time.perf_counter()
        if turn.chunks == 0:
            turn.voice_to_voice_ms = turn.endpoint_ms + int((now - turn.started) * 1000)
        self.emit(audio=pb.AgentAudio(audio=chunk, turn_id=turn.turn_id,
                                      chunk_index=turn.chunks, offset_ms=int(turn.audio_ms)))
        duration = self.spec.audio.duration_ms(len(chunk)) / 1000
        self.play_end = max(self.play_end, now) + duration
        turn.chunks += 1
        turn.audio_ms += duration * 1000
        self.ledger.audio_out(duration)
