"""nvidia.riva.tts.RivaSpeechSynthesis on Voxline's TTS engine: Synthesize,
SynthesizeOnline (bidirectional: text pieces in, audio chunks out) and
GetRivaSynthesisConfig."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
from riva.client.proto import riva_tts_pb2 as rtts
from riva.client.proto import riva_tts_pb2_grpc as rtts_grpc

from voxline.agent.text import ClauseChunker
from voxline.engines.base import TTSEngine
from voxline.riva.access import Access, RivaError, as_riva_error, invalid
from voxline.riva.audio import AudioEncoder, AudioError, output_encoding
from voxline.runtime import Runtime
from voxline.streams import Inbox
from voxline.workers import iterate_in_thread, timed

log = logging.getLogger(__name__)

SERVICE_NAME = rtts.DESCRIPTOR.services_by_name["RivaSpeechSynthesis"].full_name
RATE_RANGE = (8000, 48000)
_SENTENCE_END = re.compile(r"[.!?]$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_AHEAD = 16  # requests read ahead of synthesis (the text's total is capped too)
_EMPTY = np.zeros(0, np.float32)
SEND_LIMIT = 4 << 20  # the server's grpc.max_send_message_length (transport/server.py)


@dataclass
class Voice:
    name: str
    engine: TTSEngine
    language: str


def check_text_length(chars: int, cap: int, method: str) -> None:
    """limits.max_synthesize_chars: one request (a stream, for SynthesizeOnline) may not
    hold a TTS worker for minutes, nor buffer a book's worth of audio."""
    if chars > cap:
        what = "the stream's text" if method == "SynthesizeOnline" else "text"
        raise invalid(f"{method}: {what} has {chars} characters, over the cap of {cap} "
                      "(limits.max_synthesize_chars); split the text into several "
                      "requests of at most that many characters")


def voices(rt: Runtime) -> dict[str, Voice]:
    """The loaded TTS models (the server's and agent profiles' voices), by name."""
    found = {}
    for m in rt.models.values():
        if m.manifest.kind == "tts" and m.name not in found:
            language = str(m.manifest.options.get("language") or "en-US")
            found[m.name] = Voice(m.name, m.engine, language)  # type: ignore[arg-type]
    return found


def pick_voice(rt: Runtime, request: rtts.SynthesizeSpeechRequest) -> tuple[Voice, AudioEncoder]:
    """The voice and output format a request asks for (RivaError when it cannot be
    served). A voice name Voxline does not have gets the server's voice: clients ship
    Riva's voice names as defaults."""
    loaded = voices(rt)
    default = next(v for v in loaded.values() if v.engine is rt.tts)
    voice = loaded.get(request.voice_name.split(".")[0], default)
    code = request.language_code
    if code and code.split("-")[0].lower() != voice.language.split("-")[0].lower():
        raise invalid(f"language_code '{code}' is not served: voice '{voice.name}' speaks "
                      f"'{voice.language}'")
    if request.zero_shot_data.audio_prompt:
        raise invalid("zero-shot voice cloning (zero_shot_data) is not supported; leave it "
                      "unset")
    rate = request.sample_rate_hz or voice.engine.sample_rate
    if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
        raise invalid(f"sample_rate_hz={rate} is outside {RATE_RANGE[0]}..{RATE_RANGE[1]}")
    try:
        encoding = output_encoding(request.encoding)
    except AudioError as exc:
        raise invalid(str(exc)) from exc
    return voice, AudioEncoder(voice.engine.sample_rate, rate, encoding)


class RivaTTSService(rtts_grpc.RivaSpeechSynthesisServicer):
    def __init__(self, access: Access) -> None:
        self.access = access

    async def _speak(self, rt: Runtime, voice: Voice, text: str,
                     out: AudioEncoder) -> AsyncIterator[bytes]:
        """Synthesise one piece of text on the TTS worker threads, chunk by chunk."""
        timeout = rt.settings.faults.tts_timeout_s
        text = _CONTROL.sub(" ", text)  # espeak refuses a NUL; no control char is spoken
        rt.metrics.tts_characters.inc(len(text))
        audio_out = rt.metrics.audio.labels("out")
        chunks = timed(iterate_in_thread(lambda: voice.engine.synthesize(text),
                                         rt.executors["tts"]), timeout)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    audio_out.inc(len(chunk) / voice.engine.sample_rate)
                    if data := out.push(chunk):
                        yield data
        except TimeoutError:
            raise RivaError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"speech synthesis stalled for {timeout:g} s "
                            "(faults.tts_timeout_s); retry") from None

    async def Synthesize(self, request: rtts.SynthesizeSpeechRequest,
                         context: grpc.aio.ServicerContext) -> rtts.SynthesizeSpeechResponse:
        method = "Synthesize"
        async with self.access.slot(context, method) as rt:
            try:
                text = request.text.strip()
                if not text:
                    raise invalid("text is empty; send the text to speak")
                check_text_length(len(text), rt.settings.limits.max_synthesize_chars,
                                  "Synthesize")
                voice, out = pick_voice(rt, request)
                audio = b"".join([piece async for piece in self._speak(rt, voice, text, out)])
                audio += out.push(_EMPTY, last=True)
                if len(audio) > SEND_LIMIT:
                    raise RivaError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"the audio ({len(audio)} bytes) is over the "
                                    f"{SEND_LIMIT}-byte message limit; use SynthesizeOnline "
                                    "(streamed) for long texts")
            except Exception as exc:
                await self.access.fail(context, method, _error(exc))
            return rtts.SynthesizeSpeechResponse(
                audio=audio, meta=rtts.SynthesizeSpeechResponseMetadata(text=request.text,
                                                                         processed_text=text))

    async def SynthesizeOnline(
        self, request_iterator: AsyncIterator[rtts.SynthesizeSpeechRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rtts.SynthesizeSpeechResponse]:
        """Text may come in pieces (an LLM's tokens, sentences): it is cut into clauses
        as it arrives and each is spoken while more text comes. The first request's
        voice, rate and encoding hold for the stream."""
        method = "SynthesizeOnline"
        async with self.access.slot(context, method) as rt:
            idle = rt.settings.limits.idle_timeout_s
            # The only reader of the request stream, with one idle deadline.
            inbox: Inbox[rtts.SynthesizeSpeechRequest] = Inbox(_AHEAD, idle)
            inbox.start(request_iterator)
            try:
                async for response in self._online(rt, inbox, context, method):
                    yield response
            finally:
                await inbox.close()

    async def _online(self, rt: Runtime, inbox: Inbox[rtts.SynthesizeSpeechRequest],
                      context: grpc.aio.ServicerContext, method: str
                      ) -> AsyncIterator[rtts.SynthesizeSpeechResponse]:
        idle = rt.settings.limits.idle_timeout_s
        try:
            first = await inbox.next()
            voice, out = pick_voice(rt, first)
        except StopAsyncIteration:
            await self.access.fail(context, method, invalid(
                "stream closed before any SynthesizeSpeechRequest"))
        except TimeoutError:
            await self.access.fail(context, method, _idle(idle))
        except Exception as exc:
            await self.access.fail(context, method, _error(exc))
        pieces: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        reader = asyncio.create_task(_read_text(
            first, inbox, pieces, idle, rt.settings.limits.max_synthesize_chars))
        try:
            spoken = False
            while (piece := await pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    await self.access.fail(context, method, _error(piece))
                try:
                    async for data in self._speak(rt, voice, piece, out):
                        spoken = True
                        yield rtts.SynthesizeSpeechResponse(audio=data)
                except Exception as exc:
                    await self.access.fail(context, method, _error(exc))
            if tail := out.push(_EMPTY, last=True):
                yield rtts.SynthesizeSpeechResponse(audio=tail)
            if not spoken:
                await self.access.fail(context, method, invalid(
                    "no text to speak: every request's text was empty"))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def GetRivaSynthesisConfig(
        self, request: rtts.RivaSynthesisConfigRequest, context: grpc.aio.ServicerContext,
    ) -> rtts.RivaSynthesisConfigResponse:
        method = "GetRivaSynthesisConfig"
        await self.access.authenticate(context, method)
        rt = self.access.rt
        loaded = voices(rt)
        if request.model_name and request.model_name not in loaded:
            await self.access.fail(context, method, RivaError(
                grpc.StatusCode.NOT_FOUND, f"voice model '{request.model_name}' is not "
                f"loaded; loaded: {', '.join(loaded)}"))
        configs = []
        for name, voice in loaded.items():
            if request.model_name and name != request.model_name:
                continue
            m = next(m for m in rt.models.values() if m.engine is voice.engine)
            configs.append(rtts.RivaSynthesisConfigResponse.Config(model_name=name, parameters={
                "language_code": voice.language, "voice_name": name, "subvoices": "default:0",
                "sample_rate": str(voice.engine.sample_rate), "engine": m.manifest.engine,
                "description": m.manifest.description.strip(), "instance_id": m.instance_id,
                "default": "true" if voice.engine is rt.tts else "false",
                "encodings": "LINEAR_PCM,MULAW,ALAW", "model_generation": str(rt.generation),
            }))
        self.access.count(method, grpc.StatusCode.OK)
        return rtts.RivaSynthesisConfigResponse(model_config=configs)


async def _read_text(first: rtts.SynthesizeSpeechRequest,
                     inbox: Inbox[rtts.SynthesizeSpeechRequest],
                     pieces: asyncio.Queue, idle_s: float, max_chars: int) -> None:
    """A SynthesizeOnline stream's text, cut into speakable
    pieces, then None (or the error that ends the stream). The stream's text is capped
    as one Synthesize request's is: this reader runs ahead of synthesis, so without a
    cap a client could queue any amount of text here."""
    chunker = ClauseChunker()
    total = 0

    def add(text: str) -> None:
        nonlocal total
        total += len(text)
        if total > max_chars:
            # The stream is refused now, not after what is queued has been spoken.
            while not pieces.empty():
                pieces.get_nowait()
            check_text_length(total, max_chars, "SynthesizeOnline")
        # A request that ends a sentence ends it now, not when more text comes.
        for piece in chunker.push(text + (" " if _SENTENCE_END.search(text.rstrip()) else "")):
            pieces.put_nowait(piece)

    try:
        add(first.text)
        while True:
            try:
                msg = await inbox.next()
            except StopAsyncIteration:
                break
            add(msg.text)
        if tail := chunker.flush():
            pieces.put_nowait(tail)
        pieces.put_nowait(None)
    except TimeoutError:
        pieces.put_nowait(_idle(idle_s))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        pieces.put_nowait(exc)


def _idle(idle_s: float) -> RivaError:
    return RivaError(grpc.StatusCode.DEADLINE_EXCEEDED,
                     f"no request for {idle_s:g} s (limits.idle_timeout_s); close the "
                     "stream when the text is complete")


def _error(exc: BaseException) -> RivaError:
    return as_riva_error(exc, "SynthesizeSpeechRequest", "speech synthesis")
