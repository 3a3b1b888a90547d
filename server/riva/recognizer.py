"""One Riva recognition (a stream, or a whole Recognize request) on Voxline's own
listener: VAD windows through the shared VAD scheduler, turn-taking, partial and final
transcripts through the shared STT scheduler (batched with every call and stream).

Results go to a queue as Riva results: interim ones (partials, and the first-pass end
of utterance) while the speaker talks, a final one per utterance, in order."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from dataclasses import dataclass

import grpc
import numpy as np
from riva.client.proto import riva_asr_pb2 as rasr

from voxline.engines.base import STTResult
from voxline.riva.access import RivaError
from voxline.riva.options import RecognitionOptions
from voxline.runtime import Runtime
from voxline.session.listener import Listener, Partial
from voxline.session.turns import RATE, SpeechStopped, TurnEnded

_SENTENCE_MARKS = re.compile(r"[.,?!;:](?=\s|$)")


@dataclass
class Result:
    text: str
    final: bool
    stability: float
    audio_s: float  # audio processed when the result was made
    confidence: float = 0.0

    def streaming(self) -> rasr.StreamingRecognitionResult:
        return rasr.StreamingRecognitionResult(
            alternatives=[self._alternative()], is_final=self.final,
            stability=self.stability, channel_tag=1, audio_processed=self.audio_s)

    def offline(self) -> rasr.SpeechRecognitionResult:
        return rasr.SpeechRecognitionResult(alternatives=[self._alternative()], channel_tag=1,
                                            audio_processed=self.audio_s)

    def _alternative(self) -> rasr.SpeechRecognitionAlternative:
        # A final ends with a space, as Riva's do: clients join finals as they come.
        text = self.text + " " if self.final and self.text else self.text
        return rasr.SpeechRecognitionAlternative(transcript=text, confidence=self.confidence)


class Recognizer:
    def __init__(self, rt: Runtime, opts: RecognitionOptions) -> None:
        self.opts = opts
        self.results: asyncio.Queue[Result | BaseException] = asyncio.Queue()
        self.listener = Listener(rt.vad_scheduler, rt.stt_scheduler, opts.turn,
                                 opts.end_of_turn_ms, self._on_partial, opts.prompt,
                                 rt.turn_model)
        self._stt = rt.stt_scheduler
        self._timeout = rt.settings.faults.stt_timeout_s
        self._last: asyncio.Task | None = None  # the latest final: each waits for the one before
        self._tasks: set[asyncio.Task] = set()
        self._turn = 0  # utterances ended so far
        self._done = 0  # utterances whose final is out (or was empty)
        self.samples = 0  # 16 kHz samples heard

    @property
    def audio_s(self) -> float:
        return self.samples / RATE

    def _text(self, text: str) -> str:
        return text if self.opts.punctuation else _SENTENCE_MARKS.sub("", text).strip()

    def _on_partial(self, p: Partial) -> None:
        if not p.text:
            return
        # The share of words that later partials keep, below 1: the final transcribes the
        # whole utterance again, and 1.0 marks the first-pass end of utterance.
        words = len(p.text.split())
        stability = 0.9 * len(p.stable.split()) / words if words else 0.0
        self.results.put_nowait(Result(self._text(p.text), False, stability, p.end_ms / 1000))

    async def feed(self, samples: np.ndarray) -> None:
        """Add 16 kHz audio; results follow on the queue."""
        self.samples += len(samples)
        events = await self.listener.feed(samples)
        ends = any(isinstance(e, TurnEnded) for e in events)
        for event in events:
            if isinstance(event, TurnEnded):
                self._turn += 1
                self._final(event.audio, self.listener.endpointer.audio_ms / 1000)
            elif isinstance(event, SpeechStopped) and self.opts.eou_ms and not ends:
                self._spawn(self._first_pass(self.listener.endpointer.utterance(), self._turn))

    async def finish(self) -> None:
        """The audio ended: the utterance in progress becomes a final result; wait for
        every final."""
        ep = self.listener.endpointer
        if ep.in_turn:
            self._turn += 1
            self._final(ep.utterance(), self.audio_s)
        await self.listener.close()
        if self._last is not None:
            await self._last

    async def close(self) -> None:
        await self.listener.close()
        for task in [*self._tasks, *([self._last] if self._last else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _final(self, audio: np.ndarray, audio_s: float) -> None:
        self._last = self._spawn(self._transcribe_final(audio, audio_s, self._last))

    async def _transcribe_final(self, audio: np.ndarray, audio_s: float,
                                before: asyncio.Task | None) -> None:
        try:
            result = await asyncio.wait_for(self.listener.final(audio), self._timeout)
        except TimeoutError:
            self.results.put_nowait(RivaError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"transcription took longer than {self._timeout:g} s "
                "(faults.stt_timeout_s): the server is overloaded; retry"))
            return
        except Exception as exc:  # the stream ends with it; other streams go on
            self.results.put_nowait(exc)
            return
        if before is not None:
            with contextlib.suppress(Exception):
                await before  # results keep the order of the utterances
        text = self._text(result.text)
        if text:
            self.results.put_nowait(Result(text, True, 1.0, audio_s, _confidence(result)))
        self._done += 1

    async def _first_pass(self, audio: np.ndarray, turn: int) -> None:
        """Riva's two-pass end of utterance: at the first pause, the utterance so far as
        an interim result with stability 1 (the final follows if the pause lasts)."""
        try:
            # Queued as a final (never dropped, ahead of partials): it is the early answer
            # an agent acts on.
            result = await self._stt.transcribe(audio, final=True, prompt=self.opts.prompt)
        except Exception:  # best effort, like partials: the final still comes
            return
        if not result or not result.text or self._done > turn:
            return  # silence, or the utterance's final is already out
        self.results.put_nowait(Result(self._text(result.text), False, 1.0,
                                       self.listener.endpointer.audio_ms / 1000))


def _confidence(result: STTResult) -> float:
    return math.exp(result.avg_logprob) if result.avg_logprob is not None else 0.0
