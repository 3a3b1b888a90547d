"""Tools an agent can call: schema-checked arguments, grounding, timeouts."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jsonschema

from voxline.agent.profile import AgentProfile, ProfileError, ToolConfig
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


def _load_handler(profile: AgentProfile, tool: ToolConfig) -> Callable[..., dict]:
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


class Toolbox:
    """The tools of one profile, loaded once and shared by its calls."""

    def __init__(self, profile: AgentProfile) -> None:
        self.profile = profile
        self.configs = {t.name: t for t in profile.tools}
        self._handlers = {t.name: _load_handler(profile, t) for t in profile.tools}
        for t in profile.tools:
            jsonschema.Draft202012Validator.check_schema(t.parameters)

    def specs(self, caller_text: str) -> list[ToolSpec]:
        """The tools the LLM may call now. A grounded argument that takes digits is
        narrowed to the numbers the caller has said (an enum, so the grammar allows
        nothing else); a tool whose grounded argument has no candidate is left out."""
        numbers = sorted(spoken_numbers(caller_text))
        specs = []
        for t in self.configs.values():
            params = copy.deepcopy(t.parameters)
            props = params.get("properties", {})
            usable = True
            for key in t.grounded_arguments:
                prop = props.get(key, {})
                pattern = prop.get("pattern", "")
                if prop.get("type") != "string" or not ("0-9" in pattern or "\\d" in pattern):
                    continue  # not a digit string: checked after the call instead
                candidates = [n for n in numbers if re.fullmatch(pattern, n)]
                if not candidates:
                    usable = False
                prop["enum"] = candidates
            if usable:
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
            result = await asyncio.wait_for(
                asyncio.to_thread(
                    self._handlers[name], **args, profile_dir=self.profile.directory
                ),
                timeout=tool.timeout_s,
            )
            outcome = Outcome.OK
            if not isinstance(result, dict):
                result = {"result": result}
        except TimeoutError:
            outcome, result = Outcome.TIMEOUT, {"error": f"timed out after {tool.timeout_s}s"}
        except Exception as exc:  # a tool's failure is reported, never fatal to the call
            outcome, result = Outcome.ERROR, {"error": f"{type(exc).__name__}: {exc}"}
        ms = int((time.perf_counter() - start) * 1000)
        return ToolResult(name, args, outcome, result, ms)
