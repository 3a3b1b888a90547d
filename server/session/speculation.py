"""A reply prepared while the caller pauses, before the end-of-turn silence has run out.

When the VAD says the caller stopped (SPEECH_STOPPED, `turn.speech_stop_ms` of
silence), the audio so far is transcribed, the agent answers it (router, knowledge,
LLM) and the first clause is synthesised, all held back: nothing goes to the gateway.
If the turn then ends with no more speech, the call's reply takes that work as it is
(the transcript, the agent's events so far and what follows, the first clause's
audio). If the caller goes on, the work is cancelled and the agent forgets the turn:
no trace on the stream. A tool with side effects (an HTTP tool that is not a GET)
waits for the turn to be confirmed before it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from voxline.agent.agent import Agent, AgentEvent, Say
from voxline.engines.base import STTResult
from voxline.session.turns import TurnEnded

log = logging.getLogger(__name__)


class Speculation:
    def __init__(self, utterance: TurnEnded, agent: Agent,
                 transcribe: Callable[[np.ndarray], Awaitable[STTResult]],
                 synthesize: Callable[[str], Awaitable[list[np.ndarray]]]) -> None:
        self.utterance = utterance
        self._agent = agent
        self._transcribe = transcribe
        self._synthesize = synthesize
        self._mark = agent.checkpoint()
        self._confirmed = asyncio.Event()
        agent.hold_side_effects = self._confirmed
        self.transcript: asyncio.Future[STTResult] = asyncio.get_running_loop().create_future()
        self._events: list[AgentEvent] = []
        self._more = asyncio.Event()
        self._done = False
        self.first_say = ""
        self.first_audio: asyncio.Task[list[np.ndarray]] | None = None
        self._task = asyncio.create_task(self._run(), name="speculation")

    def matches(self, utterance: TurnEnded) -> bool:
        """The turn that ended is the one prepared (no speech since the pause)."""
        return (utterance.start_ms, utterance.end_ms) == (self.utterance.start_ms,
                                                          self.utterance.end_ms)

    async def _run(self) -> None:
        try:
            result = await self._transcribe(self.utterance.audio)
        except Exception as exc:
            self.transcript.set_exception(exc)
            self._finish()
            return
        self.transcript.set_result(result)
        text = result.text.strip()
        try:
            if text:
                async for event in self._agent.respond(text):
                    if isinstance(event, Say) and self.first_audio is None:
                        self.first_say = event.text
                        self.first_audio = asyncio.create_task(self._synthesize(event.text))
                    self._events.append(event)
                    self._more.set()
        finally:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        self._more.set()

    def confirm(self) -> None:
        """The turn ended as prepared: the reply takes this work."""
        self._confirmed.set()
        self._agent.hold_side_effects = None

    async def events(self) -> AsyncIterator[AgentEvent]:
        """The agent's events: those prepared, then the rest as they come."""
        sent = 0
        while True:
            while sent < len(self._events):
                sent += 1
                yield self._events[sent - 1]
            if self._done:
                return
            self._more.clear()
            await self._more.wait()

    async def cancel(self, undo: bool = True) -> None:
        """Stop the work; `undo`: the turn did not happen, the agent forgets it (a
        confirmed turn cut by barge-in keeps what the caller heard, as any reply)."""
        for task in (self._task, self.first_audio):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if not self.transcript.done():
            self.transcript.cancel()
        self._agent.hold_side_effects = None
        if undo:
            self._agent.restore(self._mark)
