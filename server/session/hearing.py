"""What the caller said, turn by turn: each caller turn's final transcript, and the
utterances carried from turns retracted before the agent said a word.

- A caller turn cut by a barge-in before any reply audio went out was not over: the
  caller was still talking. Its audio is carried and opens the next turn's utterance,
  whose final transcript supersedes the carried turn's; when several turns are cut in a
  row the chain stays unbroken (each final replaces the first turn not yet replaced).
- The carried audio joins the next turn when that turn begins, not when its reply task
  first runs: audio that arrives in a burst (a gateway catching up after jitter) can end
  and cut several turns before any of their tasks has run, and none of their words may
  be lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from voxline.config import FaultsSection
from voxline.session.ledger import CallLedger
from voxline.session.listener import Listener
from voxline.session.speaking import Speaker
from voxline.session.spec import AgentTurn
from voxline.session.turns import TurnEnded
from voxline.v1 import voice_agent_pb2 as pb

log = logging.getLogger(__name__)


class Hearing:
    def __init__(self, listener: Listener, ledger: CallLedger, speaker: Speaker,
                 faults: FaultsSection, over: Callable[[], bool]) -> None:
        self.listener = listener
        self.ledger = ledger
        self.speaker = speaker
        self.faults = faults
        self._over = over  # the call has ended: nothing more goes to the gateway
        self._carry: AgentTurn | None = None

    def carry(self, turn: AgentTurn) -> None:
        """A turn retracted before the agent said a word: its audio opens the next."""
        self._carry = turn

    def opening(self) -> np.ndarray | None:
        """The carried audio the next utterance starts with, if any."""
        carried = self._carry
        return None if carried is None or carried.utterance is None else carried.utterance.audio

    def join(self, turn: AgentTurn, utterance: TurnEnded) -> TurnEnded:
        """The turn's utterance, opened by the carried one's audio; the turn then
        supersedes the carried turn (or what that one was to supersede)."""
        carried, self._carry = self._carry, None
        if carried is None or carried.utterance is None:
            return utterance
        before = carried.utterance
        utterance = TurnEnded(before.start_ms, utterance.end_ms,
                              np.concatenate([before.audio, utterance.audio]))
        turn.utterance = utterance
        # A carried turn cut before its final replaced nothing on the stream: this final
        # replaces what that one would have.
        turn.supersedes = carried.supersedes if carried.supersedes and not carried.final_sent \
            else carried.turn_id
        self.ledger.supersede(turn.supersedes, turn.turn_id)
        return utterance

    async def final(self, turn: AgentTurn, utterance: TurnEnded) -> str | None:
        """The caller's words of a joined utterance ("" for noise), or None when STT
        failed; sent to the gateway as the turn's final transcript."""
        start = time.perf_counter()
        call_id = self.ledger.spec.call_id
        with self.ledger.span("stt_final"):
            try:
                if turn.speculation is not None:  # transcribed while the caller paused
                    result = await turn.speculation.transcript
                else:
                    result = await asyncio.wait_for(self.listener.final(utterance.audio),
                                                    self.faults.stt_timeout_s)
            except TimeoutError:
                self.ledger.fallback(turn, "stt_timeout")
                return None
            except Exception:
                log.exception("call %s: STT failed", call_id)
                self.ledger.fallback(turn, "stt_error")
                return None
            finally:
                turn.transcribed.set()
        turn.stt_ms = int((time.perf_counter() - start) * 1000)
        text = result.text.strip()
        turn.caller_text = text
        if self._over():
            return text  # the caller hung up meanwhile: the record has it, not the stream
        turn.final_sent = True
        self.speaker.emit(transcript=pb.Transcript(
            text=text, is_final=True, start_ms=utterance.start_ms, end_ms=utterance.end_ms,
            turn_id=turn.turn_id, supersedes_turn_id=turn.supersedes,
        ))
        log.info("call %s turn %d: final transcript in %d ms%s", call_id, turn.turn_id,
                 turn.stt_ms, f" (replaces turn {turn.supersedes})" if turn.supersedes else "")
        return text
