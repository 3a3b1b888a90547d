"""A Riva RecognitionConfig mapped onto Voxline's turn-taking and STT.

Riva's endpointing counts a share (`*_threshold`) of a window (`*_history`, in ms) of
acoustic-model frames; Voxline's endpointer counts runs of 32 ms VAD windows. The
mapping keeps the durations: a window times its share.

- start_history x start_threshold -> `turn.min_speech_ms`: speech that starts an
  utterance (a missing history is the server's min_speech_ms, a missing share is 1);
- stop_history x stop_threshold -> the end-of-utterance silence (the server's
  `turn.end_of_turn_silence_ms` by default): a final result;
- stop_history_eou x stop_threshold_eou -> the pause that asks for Riva's "first pass"
  end of utterance: an interim result of the utterance so far with stability 1.0
  (only when stop_history_eou is set, and interim_results is on).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from riva.client.proto import riva_asr_pb2 as rasr

from voxline.config import LimitsSection, TurnSection
from voxline.riva.access import invalid
from voxline.runtime import Runtime

log = logging.getLogger(__name__)

EOT_RANGE = (100, 10000)  # ms of silence that may end an utterance


@dataclass
class RecognitionOptions:
    turn: TurnSection
    end_of_turn_ms: int
    eou_ms: int | None  # the first-pass pause (None: no first pass)
    prompt: str  # speech_contexts phrases: Whisper's vocabulary prompt
    punctuation: bool
    encoding: int
    sample_rate: int
    channels: int


def _share(value: float, name: str) -> float:
    if not 0.0 < value <= 1.0:
        raise invalid(f"endpointing_config.{name}={value:g} is outside (0, 1]: it is the "
                      "share of the window that must agree")
    return value


def _window(value: int, name: str) -> int:
    if value <= 0:
        raise invalid(f"endpointing_config.{name}={value} must be a positive number of ms")
    return value


def _duration(cfg: rasr.EndpointingConfig, history: str, threshold: str,
              default: int) -> int:
    window = _window(getattr(cfg, history), history) if cfg.HasField(history) else default
    share = _share(getattr(cfg, threshold), threshold) if cfg.HasField(threshold) else 1.0
    return round(window * share)


def speech_context_phrases(config: rasr.RecognitionConfig, limits: LimitsSection) -> list[str]:
    """The boosted phrases, within limits.max_speech_context_*: they become Whisper's
    prompt on every utterance of the stream, so a client cannot make each one costly."""
    most, longest = limits.max_speech_context_phrases, limits.max_speech_context_phrase_chars
    sent = sum(len(ctx.phrases) for ctx in config.speech_contexts)  # before any work on them
    if sent > most:
        raise invalid(f"speech_contexts have {sent} phrases; at most {most} are "
                      "accepted (limits.max_speech_context_phrases): boost the words that "
                      "matter for this stream")
    phrases = [p.strip() for ctx in config.speech_contexts for p in ctx.phrases if p.strip()]
    for p in phrases:
        if len(p) > longest:
            shown = p if len(p) <= 40 else p[:40] + "..."
            raise invalid(f"speech_contexts phrase '{shown}' has {len(p)} characters; at "
                          f"most {longest} (limits.max_speech_context_phrase_chars): send "
                          "words or short phrases")
    return phrases


def recognition_options(config: rasr.RecognitionConfig, rt: Runtime,
                        interim: bool) -> RecognitionOptions:
    """Check a RecognitionConfig against what the loaded models can do (RivaError with
    INVALID_ARGUMENT when they cannot) and map it."""
    turn = rt.settings.turn
    language = str(rt.models["stt"].manifest.options.get("language") or "")
    code = config.language_code
    if code and language and code.split("-")[0].lower() != language.lower():
        raise invalid(f"language_code '{code}' is not served: the STT model "
                      f"'{rt.models['stt'].name}' transcribes '{language}'; send "
                      f"'{language}-US' or leave it empty")
    if config.enable_separate_recognition_per_channel:
        raise invalid("enable_separate_recognition_per_channel is not supported: Voxline "
                      "transcribes the first channel; unset it")
    if config.audio_channel_count < 0:
        raise invalid(f"audio_channel_count={config.audio_channel_count} is negative")

    min_speech, eot, eou = turn.min_speech_ms, turn.end_of_turn_silence_ms, None
    if config.HasField("endpointing_config"):
        ep = config.endpointing_config
        min_speech = _duration(ep, "start_history", "start_threshold", turn.min_speech_ms)
        eot = _duration(ep, "stop_history", "stop_threshold", turn.end_of_turn_silence_ms)
        if ep.HasField("stop_history_eou"):
            eou = _duration(ep, "stop_history_eou", "stop_threshold_eou", eot)
        elif ep.HasField("stop_threshold_eou"):
            _share(ep.stop_threshold_eou, "stop_threshold_eou")
    if not 32 <= min_speech <= 1000:
        raise invalid(f"start_history x start_threshold = {min_speech} ms of speech to start "
                      "an utterance; use 32 to 1000 ms")
    if not EOT_RANGE[0] <= eot <= EOT_RANGE[1]:
        raise invalid(f"stop_history x stop_threshold = {eot} ms of silence to end an "
                      f"utterance; use {EOT_RANGE[0]} to {EOT_RANGE[1]} ms")
    if eou is not None and not 32 <= eou < eot:
        raise invalid(f"stop_history_eou x stop_threshold_eou = {eou} ms must be at least "
                      f"32 ms and shorter than the end-of-utterance silence ({eot} ms)")
    update: dict = {"min_speech_ms": min_speech,
                    "partial_interval_ms": turn.partial_interval_ms if interim else 0}
    if eou is not None:
        update["speech_stop_ms"] = eou  # SpeechStopped is the first-pass pause
    phrases = speech_context_phrases(config, rt.settings.limits)
    return RecognitionOptions(
        turn=turn.model_copy(update=update), end_of_turn_ms=eot,
        eou_ms=eou if interim else None, prompt=", ".join(phrases),
        punctuation=config.enable_automatic_punctuation, encoding=config.encoding,
        sample_rate=config.sample_rate_hertz, channels=config.audio_channel_count)
