"""An LLM behind an OpenAI-compatible chat completions endpoint (vLLM in production, or
any compatible server), streamed over HTTP with httpx."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

from voxline.engines.base import ChatMessage, LLMChunk, LLMEngine, ToolSpec


class LLMServerError(RuntimeError):
    """The server answered with an HTTP error; `status` tells whether another replica
    might do better (5xx, 429) or the request itself is at fault (other 4xx)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"LLM server answered {status}: {text[:300]}")
        self.status = status


class OpenAICompatibleLLM(LLMEngine):
    def __init__(self, base_url: str, model: str, api_key_env: str | None = None,
                 base_url_env: str | None = "VOXLINE_LLM_URL", timeout_s: float = 30.0,
                 connect_timeout_s: float = 3.0,
                 extra_body: dict[str, Any] | None = None) -> None:
        """`base_url_env`: an environment variable that, when set, replaces base_url
        (one manifest, a different server per deployment)."""
        base_url = os.environ.get(base_url_env or "", "") or base_url
        headers = {}
        if api_key_env:  # the key itself only ever lives in the environment
            headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        self.model = model
        self._extra = extra_body or {}

    def close(self) -> None:
        self._client.close()

    def stream_chat(self, messages: list[ChatMessage], tools: list[ToolSpec] | None = None,
                    tool_choice: str = "auto", max_tokens: int = 128,
                    temperature: float = 0.0, *, affinity: str = "") -> Iterator[LLMChunk]:
        # One server: `affinity` has nothing to choose (llm_fleet.py uses it).
        body: dict[str, Any] = {
            "model": self.model, "messages": _messages(messages), "stream": True,
            "max_tokens": max_tokens, "temperature": temperature,
            "stream_options": {"include_usage": True}, **self._extra,
        }
        if tools and tool_choice != "none":
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in tools]
            body["tool_choice"] = (tool_choice if tool_choice in ("auto", "required") else
                                   {"type": "function", "function": {"name": tool_choice}})
        calls: dict[int, dict[str, str]] = {}
        with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise LLMServerError(response.status_code, response.text)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if usage := event.get("usage"):  # the last event, with include_usage
                    yield LLMChunk(prompt_tokens=usage.get("prompt_tokens") or 0)
                choices = event.get("choices") or []
                if not choices:
                    continue
                delta = choices[0].get("delta") or {}
                if delta.get("content"):  # one token per event as servers stream
                    yield LLMChunk(text=delta["content"], completion_tokens=1)
                for tc in delta.get("tool_calls") or []:
                    call = calls.setdefault(tc.get("index", 0), {"name": "", "arguments": ""})
                    fn = tc.get("function") or {}
                    call["name"] += fn.get("name") or ""
                    call["arguments"] += fn.get("arguments") or ""
        for call in calls.values():  # complete once the stream has ended
            yield LLMChunk(tool_name=call["name"], tool_arguments=call["arguments"] or "{}")


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Our messages in the OpenAI shape; tool results are paired with their call by id."""
    out: list[dict[str, Any]] = []
    ids: list[str] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            ids = [f"call_{len(out)}_{i}" for i in range(len(m.tool_calls))]
            out.append({"role": "assistant", "content": m.content or None, "tool_calls": [
                {"id": ids[i], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for i, c in enumerate(m.tool_calls)]})
        elif m.role == "tool":
            out.append({"role": "tool", "tool_call_id": ids.pop(0) if ids else "call_0",
                        "content": m.content})
        else:
            out.append({"role": m.role, "content": m.content})
    return out
