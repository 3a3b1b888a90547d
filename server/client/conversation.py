"""A call's events as a conversation a person can read (`voxline call` and the demo):
one line per caller final, agent turn, tool call and turn's latency."""

from __future__ import annotations

import json
from collections.abc import Callable


def _arguments(arguments_json: str) -> str:
    try:
        args = json.loads(arguments_json or "{}")
    except ValueError:
        return arguments_json
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())


def _result(result_json: str, limit: int = 100) -> str:
    try:
        result = json.loads(result_json or "null")
    except ValueError:
        result = result_json
    if isinstance(result, dict) and "say" in result:  # the agent's line says it
        result = {k: v for k, v in result.items() if k != "say"}
    text = json.dumps(result) if not isinstance(result, str) else result
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Conversation:
    """Feed it every event of a call (GatewayCall's on_event); it writes lines."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self._write = write
        self._agent: dict[int, list[str]] = {}  # agent text so far, by turn
        self._heard: dict[int, float] = {}  # the gateway's voice-to-voice, by agent turn

    def __call__(self, event: dict) -> None:
        kind, w = event["type"], self._write
        if kind == "accepted":
            w(f"call {'resumed' if event['resumed'] else 'accepted'}: profile "
              f"{event['profile']}, session {event['session_id']}")
        elif kind == "transcript" and event["final"]:
            replaces = (f"   (replaces what turn {event['supersedes']} heard)"
                        if "supersedes" in event else "")
            w(f"caller  : {event['text'] or '(no words)'}{replaces}")
        elif kind == "agent_text":
            pieces = self._agent.setdefault(event["turn"], [])
            if event["text"]:
                pieces.append(event["text"])
            if event["final"] and pieces:
                w(f"agent   : {' '.join(self._agent.pop(event['turn']))}")
        elif kind == "tool_call":
            w(f"tool    : {event['name']}({_arguments(event['arguments'])}) -> "
              f"{event['outcome']}: {_result(event['result'])} [{event['duration_ms']} ms]")
        elif kind == "turn" and "wire" in event:  # a telephony client hears only audio
            w(f"agent   : (audio) reply to turn {event['turn']} heard after "
              f"{event['voice_to_voice_ms']:.0f} ms over {event['wire']}")
        elif kind == "turn":
            self._heard[event["agent_turn"]] = event["voice_to_voice_ms"]
        elif kind == "server_turn" and event["turn"]:
            w(self._latency(event))
        elif kind == "clear_playback":
            w(f"barge-in: the caller spoke over agent turn {event['turn']}; "
              "its playback is cleared")
        elif kind == "transfer":
            w(f"transfer: to {event['target']} ({event['reason']})")
        elif kind == "hangup":
            w(f"hang-up : the agent ends the call ({event['reason']})")
        elif kind == "ended":
            w(f"call ended: {event['reason']} ({event['detail']})")
        elif kind == "error":
            w(f"error   : {event['code']}: {event['message']}")

    def _latency(self, e: dict) -> str:
        stages = [f"end of turn {e['endpoint_ms']}", f"STT {e['stt_ms']}"]
        if e["llm_first_token_ms"]:
            stages.append(f"first LLM token {e['llm_first_token_ms']}")
        if e["tool_ms"]:
            stages.append(f"tools {e['tool_ms']}")
        stages.append(f"first TTS chunk {e['tts_first_chunk_ms']}")
        line = (f"          turn {e['turn']}, route {e['route'] or '-'}: voice-to-voice "
                f"{e['voice_to_voice_ms']} ms ({', '.join(stages)} ms)")
        if e["turn"] in self._heard:
            line += f"; heard at the gateway after {self._heard[e['turn']]:.0f} ms"
        if e["speculative"]:
            line += "; prepared while the caller paused"
        if e["interrupted"]:
            line += "; interrupted"
        return line
