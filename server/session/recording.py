"""A call's recording: both sides as a stereo 16-bit WAV at the call's rate, the caller
on the left as received, the agent on the right as the caller heard it.

The caller's clock is the count of caller samples received. Each agent chunk plays from
when it was sent, after what was sent before (max of the two); a barge-in's clear cuts
the agent's side back to the caller's clock (what was sent but had not played was never
heard). A key press is not kept as a tone: its last `duration_ms` and the next 60 ms of
the caller's side are silence. Both sides end with the caller's audio.

The recorder is an AudioSink of the call's watch (watch.py). It keeps the last two
seconds of the caller's side back, so a key press reported after its tone can still
be silenced, and hands whole one-second blocks to one writer thread shared by every
call: the event loop only copies samples. A write that fails, or a disk that falls
behind, stops the recording with an error in the log; the call goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
import wave
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxline.config import Settings
from voxline.records import recording_path
from voxline.session.spec import CallSpec
from voxline.session.watch import CallWatch, pcm16

log = logging.getLogger(__name__)

_BLOCK_S = 1.0  # written in blocks of this much call audio
_HOLD_S = 2.0  # caller audio held back: the longest key press that is silenced whole
_KEY_MS = 100  # a key press that says no duration
_KEY_AFTER_MS = 60  # silenced after the key press is reported (the tone's tail)
# The writer has fallen behind: a block waited this long (a stalled disk), or this many
# wait (about 4 MB at 16 kHz; a gateway sending faster than real time gets that far).
_STALL_S = 10.0
_MAX_WAITING = 60

# One thread writes every call's recording, each file's blocks in order.
_writer = ThreadPoolExecutor(1, thread_name_prefix="recordings")


@dataclass
class Recording:
    """What a call's recording left: the file's name in the recordings folder ("" when
    nothing was written) and its length."""

    file: str = ""
    seconds: float = 0.0


def open_recorder(settings: Settings, spec: CallSpec, watch: CallWatch) -> CallRecorder | None:
    """The call's recorder, attached to its watch, when the call is recorded (consent and
    an opt-in: spec.record) and call records are kept; else None."""
    if not (spec.record and settings.records.enabled):
        return None
    recorder = CallRecorder(recording_path(settings, spec.session_id),
                            spec.audio.sample_rate, spec.call_id)
    watch.attach(recorder)
    log.info("call %s: recorded (the caller consented)", spec.call_id)
    return recorder


class CallRecorder:
    """An AudioSink that writes the call to `path` (see the module's docstring)."""

    def __init__(self, path: Path, rate: int, call_id: str) -> None:
        self.path = path
        self.rate = rate
        self.call_id = call_id
        self._file = _WavFile(path, rate, call_id)
        self._waiting: collections.deque[tuple[Future[Any], float]] = collections.deque()
        self._left = bytearray()  # caller samples from `_written` to `_heard`, 16-bit
        self._right = bytearray()  # agent samples from `_written` on (may run ahead)
        self._written = 0  # samples handed to the writer
        self._heard = 0  # the caller's clock: samples received
        self._agent_end = 0  # where the agent's audio sent so far ends
        self._quiet_until = 0  # the caller's side is silent until here (a key press)
        self._block = int(rate * _BLOCK_S)
        self._hold = int(rate * _HOLD_S)
        self._stopped = False
        self._closed = False
        self._submit(self._file.open)

    # ------------------------------------------------------------------ AudioSink

    def caller(self, pcm: np.ndarray) -> None:
        if not self._recording:
            return
        data = pcm16(pcm)
        quiet = min(len(pcm), self._quiet_until - self._heard)
        if quiet > 0:
            data = bytes(2 * quiet) + data[2 * quiet:]
        self._left += data
        self._heard += len(pcm)
        while self._recording and self._heard - self._written >= self._hold + self._block:
            self._flush(self._block)

    def agent(self, pcm: np.ndarray) -> None:
        if not self._recording:
            return
        start = max(self._agent_end, self._heard)
        self._right += bytes(2 * (start - self._written) - len(self._right))
        self._right += pcm16(pcm)
        self._agent_end = start + len(pcm)

    def cleared(self) -> None:
        if self._agent_end > self._heard:
            del self._right[2 * (self._heard - self._written):]
            self._agent_end = self._heard

    def dtmf(self, duration_ms: int) -> None:
        if not self._recording:
            return
        back = min(int(self.rate * (duration_ms or _KEY_MS) / 1000), self._heard - self._written)
        start = 2 * (self._heard - back - self._written)
        self._left[start:] = bytes(len(self._left) - start)
        self._quiet_until = max(self._quiet_until,
                                self._heard + int(self.rate * _KEY_AFTER_MS / 1000))

    # ------------------------------------------------------------------ the end

    async def close(self) -> Recording:
        """Write what is left and close the file (off the event loop); what it holds."""
        if self._closed:
            return Recording()
        if self._recording:
            self._flush(self._heard - self._written)
        self._closed = True
        self._left.clear()
        self._right.clear()
        frames = await asyncio.wrap_future(_writer.submit(self._file.close))
        if not frames:
            return Recording()
        return Recording(self.path.name, round(frames / self.rate, 3))

    # ------------------------------------------------------------------ inside

    @property
    def _recording(self) -> bool:
        return not (self._stopped or self._closed or self._file.failed)

    def _flush(self, n: int) -> None:
        """The next `n` samples of both sides to the writer."""
        frames = np.zeros((n, 2), "<i2")
        frames[:, 0] = np.frombuffer(self._left, "<i2", n)
        agent = min(n, len(self._right) // 2)
        frames[:agent, 1] = np.frombuffer(self._right, "<i2", agent)
        del self._left[:2 * n]
        del self._right[:2 * agent]
        self._written += n
        self._submit(self._file.write, frames.tobytes())

    def _submit(self, job: Callable[..., Any], *args: Any) -> None:
        waiting, now = self._waiting, time.monotonic()
        while waiting and waiting[0][0].done():
            waiting.popleft()
        if waiting and (len(waiting) >= _MAX_WAITING or now - waiting[0][1] > _STALL_S):
            log.error("call %s: recording stopped: the disk is not keeping up (%d s of audio "
                      "waiting to be written, for %.0f s); the call goes on", self.call_id,
                      len(waiting) * _BLOCK_S, now - waiting[0][1])
            self._stopped = True
            self._left.clear()
            self._right.clear()
            return
        waiting.append((_writer.submit(job, *args), now))


class _WavFile:
    """The file, in the writer thread. The first failure logs and ends the writing."""

    def __init__(self, path: Path, rate: int, call_id: str) -> None:
        self.path, self.rate, self.call_id = path, rate, call_id
        self.frames = 0  # written and in the header
        self.failed = False
        self._wav: wave.Wave_write | None = None
        self._fh: Any = None

    def open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Only the server's user may read what callers said.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._fh = os.fdopen(fd, "wb")
            self._wav = wave.Wave_write(self._fh)  # closed in close()
            self._wav.setnchannels(2)
            self._wav.setsampwidth(2)
            self._wav.setframerate(self.rate)
        except Exception as exc:
            self._fail(exc)

    def write(self, data: bytes) -> None:
        if self.failed or self._wav is None:
            return
        try:
            self._wav.writeframes(data)  # the header says how much after each block
            self.frames += len(data) // 4
        except Exception as exc:
            self._fail(exc)

    def close(self) -> int:
        """Frames the file holds (0: none, and no file is left)."""
        try:
            if self._wav is not None:
                self._wav.close()
            if self._fh is not None:
                self._fh.close()
        except Exception as exc:
            self._fail(exc)
        if not self.frames:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
        return self.frames

    def _fail(self, exc: Exception) -> None:
        if not self.failed:
            self.failed = True
            log.error("call %s: recording stopped: cannot write %s: %s; the call goes on "
                      "(what was written stays)", self.call_id, self.path, exc)
