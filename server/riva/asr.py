"""nvidia.riva.asr.RivaSpeechRecognition on Voxline: Recognize, StreamingRecognize and
GetRivaSpeechRecognitionConfig."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc

from voxline.riva.access import Access, RivaError, as_riva_error, invalid
from voxline.riva.audio import AudioDecoder, AudioError, decode_all
from voxline.riva.options import recognition_options
from voxline.riva.recognizer import Recognizer, Result
from voxline.runtime import Runtime
from voxline.session.turns import RATE
from voxline.streams import Inbox

log = logging.getLogger(__name__)

SERVICE_NAME = rasr.DESCRIPTOR.services_by_name["RivaSpeechRecognition"].full_name


def riva_language(rt: Runtime) -> str:
    language = str(rt.models["stt"].manifest.options.get("language") or "")
    return f"{language}-US" if language == "en" else (language or "multi")


class RivaASRService(rasr_grpc.RivaSpeechRecognitionServicer):
    def __init__(self, access: Access) -> None:
        self.access = access

    async def Recognize(self, request: rasr.RecognizeRequest,
                        context: grpc.aio.ServicerContext) -> rasr.RecognizeResponse:
        method = "Recognize"
        async with self.access.slot(context, method) as rt:
            try:
                results = await self._recognize(rt, request)
            except Exception as exc:  # a status for the client; the server goes on
                await self.access.fail(context, method, _error(exc))
            return rasr.RecognizeResponse(results=[r.offline() for r in results])

    async def _recognize(self, rt: Runtime, request: rasr.RecognizeRequest) -> list[Result]:
        opts = recognition_options(request.config, rt, interim=False)
        if not request.audio:
            raise invalid("audio is empty; send the audio bytes (a WAV file, or raw samples "
                          "with encoding and sample_rate_hertz set)")
        try:
            audio, decoder = decode_all(request.audio, opts.encoding, opts.sample_rate,
                                        opts.channels)
        except AudioError as exc:
            raise invalid(str(exc)) from exc
        rt.metrics.audio.labels("in").inc(decoder.input_seconds)
        rec = Recognizer(rt, opts)
        try:
            for i in range(0, len(audio), RATE):  # a second at a time: other streams interleave
                await rec.feed(audio[i:i + RATE])
            await rec.finish()
        finally:
            await rec.close()
        results = []
        while not rec.results.empty():
            item = rec.results.get_nowait()
            if isinstance(item, BaseException):
                raise _error(item)
            results.append(item)
        return results

    async def StreamingRecognize(
        self, request_iterator: AsyncIterator[rasr.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rasr.StreamingRecognizeResponse]:
        method = "StreamingRecognize"
        async with self.access.slot(context, method) as rt:
            limits = rt.settings.limits
            # The only reader of the request stream, with one idle deadline; two
            # messages ahead at most (a Riva message may be 64 MiB).
            inbox: Inbox[rasr.StreamingRecognizeRequest] = Inbox(2, limits.idle_timeout_s)
            inbox.start(request_iterator)
            try:
                async for response in self._streaming(rt, inbox, context, method):
                    yield response
            finally:
                await inbox.close()

    async def _streaming(self, rt: Runtime, inbox: Inbox[rasr.StreamingRecognizeRequest],
                         context: grpc.aio.ServicerContext, method: str
                         ) -> AsyncIterator[rasr.StreamingRecognizeResponse]:
        limits = rt.settings.limits
        try:
            first = await inbox.next()
            if first.WhichOneof("streaming_request") != "streaming_config":
                raise invalid("the first StreamingRecognizeRequest must carry "
                              "streaming_config; send the audio after it")
            streaming = first.streaming_config
            opts = recognition_options(streaming.config, rt, streaming.interim_results)
        except StopAsyncIteration:
            await self.access.fail(context, method, invalid(
                "stream closed before the streaming_config message"))
        except TimeoutError:
            await self.access.fail(context, method, _idle(limits.idle_timeout_s))
        except Exception as exc:
            await self.access.fail(context, method, _error(exc))
        rec = Recognizer(rt, opts)
        reader = asyncio.create_task(self._read(rt, inbox, rec, opts))
        try:
            while (item := await rec.results.get()) is not None:
                if isinstance(item, BaseException):
                    await self.access.fail(context, method, _error(item))
                yield rasr.StreamingRecognizeResponse(results=[item.streaming()])
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await rec.close()

    async def _read(self, rt: Runtime, inbox: Inbox[rasr.StreamingRecognizeRequest],
                    rec: Recognizer, opts) -> None:
        """The only reader of the request stream: audio in, then the end of the audio
        (None on the results queue), or the error that ends the stream."""
        limits = rt.settings.limits
        audio_in = rt.metrics.audio.labels("in")
        decoder = AudioDecoder(opts.encoding, opts.sample_rate, opts.channels)
        try:
            while True:
                try:
                    msg = await inbox.next()
                except StopAsyncIteration:
                    break
                if msg.WhichOneof("streaming_request") == "streaming_config":
                    raise invalid("streaming_config may only be sent in the first message")
                if not msg.audio_content:
                    continue
                before = decoder.input_seconds
                samples = decoder.push(msg.audio_content)
                audio_in.inc(decoder.input_seconds - before)
                await rec.feed(samples)
                if decoder.input_seconds > limits.max_call_s:
                    await rec.finish()
                    raise RivaError(grpc.StatusCode.OUT_OF_RANGE,
                                    f"the stream passed limits.max_call_s "
                                    f"({limits.max_call_s:g} s of audio); open a new stream")
            await rec.feed(decoder.flush())
            await rec.finish()
            rec.results.put_nowait(None)
        except TimeoutError:
            rec.results.put_nowait(_idle(limits.idle_timeout_s))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the response side, which ends the stream
            rec.results.put_nowait(exc)

    async def GetRivaSpeechRecognitionConfig(
        self, request: rasr.RivaSpeechRecognitionConfigRequest,
        context: grpc.aio.ServicerContext,
    ) -> rasr.RivaSpeechRecognitionConfigResponse:
        method = "GetRivaSpeechRecognitionConfig"
        await self.access.authenticate(context, method)
        rt = self.access.rt
        stt = rt.models["stt"]
        if request.model_name and request.model_name != stt.name:
            await self.access.fail(context, method, RivaError(
                grpc.StatusCode.NOT_FOUND, f"model '{request.model_name}' is not loaded; "
                f"the STT model is '{stt.name}' (ask without model_name to list it)"))
        m, turn = stt.manifest, rt.settings.turn
        params = {
            "language_code": riva_language(rt), "engine": m.engine, "device": m.device,
            "compute_type": m.compute_type, "description": m.description.strip(),
            "source": str(stt.weights), "instance_id": stt.instance_id,
            "model_generation": str(rt.generation), "sample_rate": str(RATE),
            "encodings": "LINEAR_PCM,MULAW,ALAW,WAV", "vad": rt.models["vad"].name,
            "end_of_turn_silence_ms": str(turn.end_of_turn_silence_ms),
            "min_speech_ms": str(turn.min_speech_ms),
            "partial_interval_ms": str(turn.partial_interval_ms),
        }
        self.access.count(method, grpc.StatusCode.OK)
        return rasr.RivaSpeechRecognitionConfigResponse(model_config=[
            rasr.RivaSpeechRecognitionConfigResponse.Config(
                model_name=stt.name, parameters={**params, "type": kind})
            for kind in ("online", "offline")  # one model serves both
        ])


def _idle(seconds: float) -> RivaError:
    return RivaError(grpc.StatusCode.DEADLINE_EXCEEDED,
                     f"no message for {seconds:g} s (limits.idle_timeout_s); stream audio "
                     "continuously, silence included, or close the stream")



def _error(exc: BaseException) -> RivaError:
    return as_riva_error(exc, "StreamingRecognizeRequest", "recognition")
