"""Turn control for one call: which agent turn runs, and what ends it.

- A caller turn that ends starts a reply (its own task): the final transcript, the
  agent's answer (router, knowledge, LLM and tools, or the reply prepared while the
  caller paused) spoken clause by clause, and a silence watchdog beside it.
- Caller speech over an interruptible reply is a barge-in: the reply stops and the
  gateway clears what it has not played. If no reply audio went out yet the caller was
  still talking: the turn is retracted and its audio carried into the next, whose
  final transcript supersedes this one's (tools it started keep their results).
  What the caller said, and the carried turns, are `hearing.py`'s.
- Several failed turns in a row, a transfer digit, or a drain hand the call to a human
  (or end it) with a last phrase that cannot be interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from voxline.agent.agent import Agent, Control, Say, ToolEvent, TurnOutcome
from voxline.runtime import Runtime
from voxline.session.hearing import Hearing
from voxline.session.ledger import CallLedger
from voxline.session.listener import Listener
from voxline.session.speaking import Speaker
from voxline.session.spec import AgentTurn
from voxline.session.speculation import Speculation
from voxline.session.turns import SpeechStopped, TurnEnded
from voxline.v1 import voice_agent_pb2 as pb

log = logging.getLogger(__name__)

# Fallbacks that mean a turn failed (several in a row send the call to a human); a
# filler said during a long wait is a fallback too, but not a failure.
FAILURES = {"stt_error", "stt_timeout", "llm_error", "llm_timeout", "tts_error",
            "tts_timeout", "tool_error", "tool_timeout"}

AgentEnds = Callable[[int, str], None]  # (CallEnded reason, detail), behind queued input


class TurnControl:
    def __init__(self, runtime: Runtime, agent: Agent, listener: Listener, speaker: Speaker,
                 ledger: CallLedger, agent_ends: AgentEnds, resumed: bool) -> None:
        self.rt = runtime
        self.agent = agent
        self.profile = agent.profile
        self.listener = listener
        self.speaker = speaker
        self.ledger = ledger
        self.faults = runtime.settings.faults
        self._agent_ends = agent_ends
        self._resumed = resumed
        self.turn: AgentTurn | None = None
        self._reply: asyncio.Task | None = None
        self.hearing = Hearing(listener, ledger, speaker, self.faults, lambda: self.over)
        self._speculation: Speculation | None = None  # prepared, not yet confirmed
        self.transferring = False
        self._failed_turns = 0  # in a row
        self.over = False  # the call has ended: nothing more goes to the gateway
        self._whispers: list[tuple[str, str]] = []  # (text, who): a supervisor's, to say

    @property
    def replying(self) -> bool:
        return self._reply is not None and not self._reply.done()

    # ------------------------------------------------------------------ caller events

    async def speech_started(self) -> None:
        await self._discard_speculation()  # the caller goes on
        if self.replying and self.turn is not None and self.turn.interruptible:
            self.barge_in()

    def played(self, mark: pb.PlaybackMark) -> None:
        """The gateway reports how much of an agent turn it has played (a mark)."""
        turn = self.turn
        if turn is not None and turn.turn_id == mark.turn_id and not turn.cancelled:
            turn.played_ms = max(turn.played_ms or 0.0, float(mark.played_ms))

    def speech_stopped(self, stopped: SpeechStopped) -> None:
        """Prepare the reply to what the caller said so far (session/speculation.py)."""
        ep = self.listener.endpointer
        if (not self.rt.settings.turn.speculate or self.transferring or not ep.in_turn
                or self._speculation is not None or self.replying):
            return
        utterance = ep.so_far(stopped.audio_ms)
        audio = utterance.audio
        if (opening := self.hearing.opening()) is not None:
            audio = np.concatenate([opening, audio])  # a carried turn's audio opens this one
        self._speculation = Speculation(
            TurnEnded(utterance.start_ms, utterance.end_ms, audio), self.agent,
            lambda a: asyncio.wait_for(self.listener.final(a), self.faults.stt_timeout_s),
            self.speaker.audio_all)

    async def turn_ended(self, event: TurnEnded, input_lag_s: float) -> None:
        """The caller's turn is over: answer it. Its clock starts when its last audio
        arrived, not when it was processed."""
        if self.transferring:
            return
        spec, self._speculation = self._speculation, None
        if spec is not None and not spec.matches(event):
            await self._drop(spec)
            spec = None
        if spec is not None:
            spec.confirm()
            self.rt.stats.speculations_used += 1
            self.rt.metrics.speculations.labels("used").inc()
        self.ledger.caller_turns += 1
        turn = AgentTurn(self.ledger.caller_turns, time.perf_counter() - input_lag_s,
                         endpoint_ms=self.listener.endpointer.audio_ms - event.end_ms,
                         input_lag_ms=int(input_lag_s * 1000), utterance=event,
                         speculation=spec)
        self._start(turn, utterance=self.hearing.join(turn, event))

    def partial(self, text: str, stable: str, start_ms: int, end_ms: int) -> None:
        self.speaker.emit(transcript=pb.Transcript(
            text=text, stable_text=stable, is_final=False,
            turn_id=self.ledger.caller_turns + 1, start_ms=start_ms, end_ms=end_ms))

    # ------------------------------------------------------------------ the call's own turns

    def greet(self) -> None:
        # A resumed call is not greeted again: the caller hears that the agent is back.
        fb = self.profile.fallback
        self._start(AgentTurn(0, time.perf_counter()),
                    say=fb.resumed if self._resumed else self.profile.greeting)

    async def hand_over(self, action: str, reason: str) -> None:
        """Transfer to a human or end the call now (a DTMF digit), whatever the agent
        was doing."""
        if self.transferring:
            return
        await self._discard_speculation()
        self._final_turn(self.agent.end_call(action, reason))

    async def goodbye(self) -> None:
        """Say the shutdown phrase over whatever the agent was doing, and let it play."""
        self._final_turn(self.profile.fallback.shutdown)
        assert self._reply is not None
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._reply), 20)

    def whisper(self, text: str, who: str) -> None:
        """A supervisor's sentence, which the agent says as its next turn: now when it is
        free (neither answering nor hearing the caller out), else after the reply in
        progress."""
        self._whispers.append((text, who))
        self.say_whisper()

    def say_whisper(self) -> None:
        """Start the next whispered turn if the agent is free."""
        if (not self._whispers or self.over or self.transferring or self.replying
                or self.listener.endpointer.in_turn):
            return
        text, who = self._whispers.pop(0)
        self.ledger.caller_turns += 1
        self._start(AgentTurn(self.ledger.caller_turns, time.perf_counter(), supervisor=who,
                              whispered=text), say=text)

    def _final_turn(self, say: str | AsyncIterator[object], interrupt: bool = True) -> None:
        """A last turn the caller cannot interrupt, numbered as a caller turn; it cuts
        the reply in progress short (`interrupt`)."""
        self.transferring = True  # no new turns now
        if interrupt and self.replying:
            self.barge_in()
        self.ledger.caller_turns += 1
        self._start(AgentTurn(self.ledger.caller_turns, time.perf_counter(),
                              interruptible=False), say=say)

    def barge_in(self) -> None:
        turn = self.turn
        assert turn is not None and self._reply is not None
        self.speaker.clear(turn)
        self._reply.cancel()
        log.info("call %s: barge-in on agent turn %d (%s)", self.ledger.spec.call_id,
                 turn.turn_id, "speaking" if turn.chunks else "thinking")

    async def close(self) -> None:
        await self._discard_speculation()
        if self.replying:
            assert self._reply is not None
            turn = self.turn
            if turn is not None and turn.utterance is not None:
                # The caller hung up while their last words were being transcribed:
                # the record keeps them (the answer is not worth waiting for).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn.transcribed.wait(), self.faults.stt_timeout_s)
            self._reply.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reply
        await self._record_unfinished()

    async def _record_unfinished(self) -> None:
        """The call ended while the caller was speaking: their words so far (joined to
        a carried turn's) are transcribed for the record, as a turn nobody answers."""
        ep = self.listener.endpointer
        if not ep.in_turn:
            return
        self.over = True  # nothing of it goes to the gateway
        turn = AgentTurn(self.ledger.caller_turns + 1, time.perf_counter())
        await self.hearing.final(turn, self.hearing.join(turn, ep.so_far(ep.audio_ms)))
        if turn.caller_text or turn.supersedes:  # a carried turn's record points here
            self.ledger.caller_turns += 1
            self.ledger.account(turn, self._resumed)

    # ------------------------------------------------------------------ speculation

    async def _discard_speculation(self) -> None:
        spec, self._speculation = self._speculation, None
        if spec is not None:
            await self._drop(spec)

    async def _drop(self, spec: Speculation) -> None:
        self.rt.stats.speculations_wasted += 1
        self.rt.metrics.speculations.labels("wasted").inc()
        await spec.cancel()

    # ------------------------------------------------------------------ one reply

    def _start(self, turn: AgentTurn, say: str | AsyncIterator[object] = "",
               utterance: TurnEnded | None = None) -> None:
        """Answer `utterance` through the agent, or speak `say` (a text, or agent
        events)."""
        self.turn = turn
        self._reply = asyncio.create_task(self._reply_task(turn, say, utterance))
        # A barge-in can cancel the task before it ever runs (audio in a burst): the turn
        # still ends, and passes its words on.
        self._reply.add_done_callback(
            lambda task: self._finish(turn) if task.cancelled() and not turn.finished else None)

    async def _reply_task(self, turn: AgentTurn, say: str | AsyncIterator[object],
                          utterance: TurnEnded | None) -> None:
        with self.ledger.span("turn", **{"voxline.turn_id": turn.turn_id}) as span:
            if utterance is not None:
                self.ledger.end_of_turn_span(turn)
            watchdog = (asyncio.create_task(self.speaker.fill_silence(turn))
                        if utterance is not None else None)
            try:
                await self._reply_steps(turn, say, utterance)
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                span.set_attributes({"voxline.voice_to_voice_ms": turn.voice_to_voice_ms,
                                     "voxline.interrupted": turn.cancelled,
                                     "voxline.fallbacks": turn.fallbacks})

    async def _reply_steps(self, turn: AgentTurn, say: str | AsyncIterator[object],
                           utterance: TurnEnded | None) -> None:
        spec = turn.speculation
        try:
            if utterance is not None:
                text = await self.hearing.final(turn, utterance)
                if text is None:  # STT failed: ask the caller to say it again
                    pieces = _say(self.profile.fallback.not_understood)
                elif not text or self.over:
                    return  # noise, not words, or the caller has gone: nothing to answer
                else:
                    pieces = spec.events() if spec is not None else self.agent.respond(text)
            else:
                pieces = _say(say) if isinstance(say, str) else say
            await self.speaker.speak(turn, self._texts(turn, pieces, utterance is not None))
            self.speaker.emit(agent_text=pb.AgentText(text="", turn_id=turn.turn_id,
                                                      is_final=True))
            self.ledger.agent_turns += 1
            await self.speaker.until_played()  # the turn is over when the caller heard it
            if turn.control is not None:
                self._ends_call(turn.control)
        except Exception as exc:
            log.exception("call %s: agent turn %d failed", self.ledger.spec.call_id,
                          turn.turn_id)
            self.speaker.emit(error=pb.Error(code="INTERNAL",
                                             message=f"agent turn failed: {exc}"))
        finally:
            if spec is not None:  # e.g. a barge-in: the rest of its work stops
                await spec.cancel(undo=False)
            self._finish(turn)

    async def _texts(self, turn: AgentTurn, pieces: AsyncIterator[object],
                     from_llm: bool) -> AsyncIterator[str]:
        """The agent's events as the texts to speak; the others noted in the turn."""
        with self.ledger.span("agent" if from_llm else "say"):
            async for event in pieces:
                if isinstance(event, Say):
                    self.speaker.emit(agent_text=pb.AgentText(text=event.text,
                                                              turn_id=turn.turn_id))
                    yield event.text
                elif isinstance(event, Control):
                    turn.control = event
                elif isinstance(event, ToolEvent):
                    self.ledger.tool_call(turn, event.result)
                elif isinstance(event, TurnOutcome):
                    turn.outcome = event
                    if event.failure:
                        self.ledger.fallback(turn, event.failure)

    def _ends_call(self, control: Control) -> None:
        """Tell the gateway, then end the call behind the caller's queued input."""
        if control.action == "transfer_to_human":
            assert self.profile.transfer is not None
            target = self.profile.transfer.target
            self.speaker.emit(transfer=pb.TransferRequest(target=target, reason=control.reason))
            self._agent_ends(pb.CallEnded.TRANSFERRED, f"transferred to {target}")
        else:
            self.speaker.emit(hangup=pb.HangupRequest(reason=control.reason))
            self._agent_ends(pb.CallEnded.AGENT_HANGUP, control.reason)

    def _finish(self, turn: AgentTurn) -> None:
        turn.finished = True
        if self.over:
            # Nothing more goes to the gateway, but the record keeps what the caller
            # said before hanging up, answered or not.
            if turn.caller_text:
                self.ledger.account(turn, self._resumed)
            return
        if turn.turn_id > 0 or turn.chunks:
            # Every caller turn ends with metrics, even one with nothing to answer, so a
            # gateway can tell the turn is over.
            if turn.cancelled and not turn.chunks and turn.utterance is not None:
                self.hearing.carry(turn)
                if turn.caller_text:
                    self.agent.retract_turn()
            elif turn.cancelled and not turn.chunks and turn.supervisor:
                # A whisper the caller cut before a word of it played: it is said once
                # they are done, still ahead of any later one.
                self._whispers.insert(0, (turn.whispered, turn.supervisor))
            elif turn.caller_text or turn.supervisor:
                # A whispered turn is the agent's too: the LLM knows it was said.
                self.agent.commit_reply(turn.heard_text(), turn.cancelled)
            if not turn.caller_text:
                turn.outcome = None  # nothing was answered
            self.speaker.emit(turn_metrics=self.ledger.turn_metrics(turn))
            self.ledger.account(turn, self._resumed)
            self.ledger.persist()
        self._after_failures(turn)
        if self._reply is asyncio.current_task():  # this reply is over: a whisper may go
            self._reply = None
            self.say_whisper()

    def _after_failures(self, turn: AgentTurn) -> None:
        """Several failed turns in a row: hand the call to a human (or end it)."""
        if turn.turn_id == 0 or turn.control is not None or self.transferring:
            return
        if not FAILURES.intersection(turn.fallbacks):
            self._failed_turns = 0
            return
        self._failed_turns += 1
        if self._failed_turns < self.faults.max_failed_turns:
            return
        action = "transfer_to_human" if self.profile.transfer else "end_call"
        self.rt.metrics.fallbacks.labels(f"{action}_after_failures").inc()
        log.warning("call %s: %d failed turns in a row, %s", self.ledger.spec.call_id,
                    self._failed_turns, action)
        # Called as the failed reply's task ends: it has nothing left to cut short.
        self._final_turn(self.agent.end_call(action, f"{self._failed_turns} failed turns "
                                             "in a row"), interrupt=False)


async def _say(text: str) -> AsyncIterator[object]:
    yield Say(text)
