"""Tools an agent can call: schema-checked arguments, grounding, timeouts."""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema

from voxline.agent.profile import AgentProfile, HttpTool, ProfileError, ToolConfig
from voxline.agent.text import spoken_numbers
from voxline.engines.base import ToolSpec


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    INVALID_ARGUMENTS = "invalid_arguments"


@dataclass
class ToolResult:
    name: str
    arguments: dict[str, Any]
    outcome: Outcome
    result: dict[str, Any]
    duration_ms: int

    @property
    def result_json(self) -> str:
        return json.dumps(self.result)


log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "voxline.tools"
_BUILTIN_SCHEMA = {"type": "object", "properties": {"reason": {"type": "string"}},
                   "additionalProperties": False}
_BUILTIN_DESCRIPTIONS = {
    "transfer_to_human": "Transfer the caller to a human agent, when they ask for a person "
                         "or the request cannot be handled here.",
    "end_call": "End the call, when the caller says goodbye or has nothing more to ask.",
}


def _load_handler(profile: AgentProfile, tool: ToolConfig) -> Callable[..., dict] | None:
    if tool.entry_point:
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=tool.entry_point)
        if not found:
            raise ProfileError(
                f"profile '{profile.name}', tool '{tool.name}': no '{tool.entry_point}' in "
                f"the {ENTRY_POINT_GROUP} entry points of the installed packages")
        return next(iter(found)).load()
    if not tool.handler:
        return None  # http and builtin tools run here, not in a Python function
    file, _, func = tool.handler.partition(":")
    path = (profile.directory / file).resolve()
    if not func or not path.is_file() or profile.directory.resolve() not in path.parents:
        raise ProfileError(
            f"profile '{profile.name}', tool '{tool.name}': handler '{tool.handler}' must be "
            "FILE.py:function with FILE inside the profile folder"
        )
    spec = importlib.util.spec_from_file_location(f"voxline_profile_{profile.name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = getattr(module, func, None)
    if not callable(handler):
        raise ProfileError(f"profile '{profile.name}': {file} has no function '{func}'")
    return handler


class ResponseTooLarge(RuntimeError):
    """An HTTP tool's answer passed its max_response_bytes."""


def _plain_secret_refusal(profile: AgentProfile, tool: ToolConfig) -> str:
    """Why the tool's secret headers may not go to its URL ("" when they may)."""
    assert tool.http is not None
    url = urlsplit(tool.http.url)
    if not tool.http.headers_from_env or url.scheme == "https" \
            or (url.hostname or "") in profile.http_plain_hosts:
        return ""
    return (f"tool '{tool.name}' sends headers from the environment "
            f"({', '.join(tool.http.headers_from_env)}) but its url is not https; secrets "
            "go only over https, or to a host listed in the profile's http_plain_hosts "
            "(a loopback test server)")


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    """The body, read as it streams and given up at the cap (Content-Length is only a
    claim: a server may send more, or none)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ResponseTooLarge(f"the answer is {declared} bytes, over the tool's "
                               f"max_response_bytes ({cap})")
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > cap:
            raise ResponseTooLarge(f"the answer passed the tool's max_response_bytes ({cap}); "
                                   "the rest was not read")
    return bytes(body)


class Toolbox:
    """The tools of one profile, loaded once and shared by its calls."""

    def __init__(self, profile: AgentProfile, executor: Executor | None = None) -> None:
        self.profile = profile
        self.executor = executor  # where Python handlers run (None: the default pool)
        self.configs = {t.name: _with_builtin_defaults(t) for t in profile.tools}
        self._handlers = {t.name: _load_handler(profile, t) for t in profile.tools}
        # One HTTP client (connection pool) for the profile's webhooks, per event loop:
        # an httpx client belongs to the loop it was first used on.
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        for t in self.configs.values():
            jsonschema.Draft202012Validator.check_schema(t.parameters)
            if t.builtin == "transfer_to_human" and profile.transfer is None:
                raise ProfileError(f"profile '{profile.name}': tool '{t.name}' needs a "
                                   "`transfer` section (where to transfer to)")
            if t.http is not None and (why := _plain_secret_refusal(profile, t)):
                # Said at load so the operator sees it; enforced on every call.
                log.warning("profile %s: %s; the tool will fail", profile.name, why)

    def _client(self) -> httpx.AsyncClient:
        """The running loop's client, made on first use (loops that have closed since
        are forgotten: their connections cannot be used or closed any more)."""
        loop = asyncio.get_running_loop()
        for old in [lp for lp in self._clients if lp.is_closed()]:
            del self._clients[old]
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(follow_redirects=False)
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the HTTP client of the running loop (and forget the others')."""
        clients, self._clients = self._clients, {}
        loop = asyncio.get_running_loop()
        for owner, client in clients.items():
            if owner is loop:
                await client.aclose()

    def specs(self, caller_text: str) -> list[ToolSpec]:
        """The tools the LLM knows of. A grounded argument that takes digits is narrowed
        to the numbers the caller has said (an enum, so the grammar allows nothing
        else); with no candidate its enum is empty and the tool cannot be called now
        (chatml.callable_tools), though it stays in the list so the prompt's fixed part
        stays the same."""
        numbers = sorted(spoken_numbers(caller_text))
        specs = []
        for t in self.configs.values():
            if not t.llm:
                continue
            params = copy.deepcopy(t.parameters)
            props = params.get("properties", {})
            for key in t.grounded_arguments:
                prop = props.get(key, {})
                pattern = prop.get("pattern", "")
                if prop.get("type") != "string" or not ("0-9" in pattern or "\\d" in pattern):
                    continue  # not a digit string: checked after the call instead
                prop["enum"] = [n for n in numbers if re.fullmatch(pattern, n)]
            specs.append(ToolSpec(t.name, t.description, params))
        return specs

    def check(self, name: str, raw_arguments: str, caller_text: str) -> dict[str, Any] | str:
        """Parsed arguments, or why they are refused."""
        tool = self.configs.get(name)
        if tool is None:
            return f"unknown tool '{name}'"
        try:
            args = json.loads(raw_arguments or "{}")
            jsonschema.validate(args, tool.parameters)
        except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
            return f"arguments do not match the schema: {str(exc).splitlines()[0]}"
        said = spoken_numbers(caller_text)
        for key in tool.grounded_arguments:
            value = str(args.get(key, ""))
            value_digits = re.sub(r"\D", "", value)
            grounded = (value_digits in said) if value_digits else (
                value.lower() in caller_text.lower()
            )
            if not grounded:
                return f"argument {key}={value!r} was not said by the caller"
        return args

    async def run(self, name: str, args: dict[str, Any]) -> ToolResult:
        tool = self.configs[name]
        start = time.perf_counter()
        try:
            result = await asyncio.wait_for(self._call(tool, args), timeout=tool.timeout_s)
            outcome = Outcome.OK
            if not isinstance(result, dict):
                result = {"result": result}
        except TimeoutError:
            outcome, result = Outcome.TIMEOUT, {"error": f"timed out after {tool.timeout_s}s"}
        except Exception as exc:  # a tool's failure is reported, never fatal to the call
            outcome, result = Outcome.ERROR, {"error": f"{type(exc).__name__}: {exc}"}
        ms = int((time.perf_counter() - start) * 1000)
        if outcome is not Outcome.OK:
            log.info("tool %s: %s (%s)", name, outcome, result.get("error"))
        return ToolResult(name, args, outcome, result, ms)

    async def _call(self, tool: ToolConfig, args: dict[str, Any]) -> Any:
        if tool.builtin:
            return {"action": tool.builtin, "reason": args.get("reason", "")}
        if tool.http:
            return await self._http(tool, tool.http, args)
        handler = self._handlers[tool.name]
        assert handler is not None
        # On the tools pool: a handler that hangs keeps a thread of its own kind only.
        call = functools.partial(handler, **args, profile_dir=self.profile.directory)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def _http(self, tool: ToolConfig, http: HttpTool, args: dict[str, Any]) -> Any:
        url = urlsplit(http.url)
        host = url.hostname or ""
        if host not in self.profile.http_allowed_hosts:
            raise PermissionError(f"host '{host}' is not in the profile's http_allowed_hosts; "
                                  "no request was sent")
        if url.scheme not in ("http", "https"):
            raise PermissionError(f"url scheme '{url.scheme}' is not http or https; no "
                                  "request was sent")
        if why := _plain_secret_refusal(self.profile, tool):
            raise PermissionError(f"{why}; no request was sent")
        # identity: the size cap counts what the server sends, not a decompressed bomb
        headers = {"Accept-Encoding": "identity"}
        for header, var in http.headers_from_env.items():
            if var not in os.environ:
                raise RuntimeError(f"environment variable {var} (header {header}) is not set")
            headers[header] = os.environ[var]
        body = http.method in ("POST", "PUT", "PATCH")
        client = self._client()
        for attempt in range(http.retries + 1):
            last = attempt == http.retries
            try:
                async with client.stream(
                        http.method, http.url, headers=headers, timeout=tool.timeout_s,
                        json=args if body else None, params=None if body else args,
                ) as response:
                    if response.status_code >= 500 and not last:
                        continue
                    response.raise_for_status()
                    content = await _read_capped(response, http.max_response_bytes)
            except httpx.TransportError:
                if last:
                    raise
                continue
            return json.loads(content)


def _with_builtin_defaults(tool: ToolConfig) -> ToolConfig:
    if not tool.builtin:
        return tool
    return tool.model_copy(update={
        "description": tool.description or _BUILTIN_DESCRIPTIONS[tool.builtin],
        "parameters": _BUILTIN_SCHEMA if tool.parameters == {"type": "object"}
        else tool.parameters,
    })
