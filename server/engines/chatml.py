"""The ChatML prompt the SmolLM2 family reads, with tool calls in a text format a small
model can follow: "functions.<name>: {json}" to call a tool, "message: ..." to answer.

The prompt comes as parts, each tokenized on its own, so that a message renders to the
same tokens wherever it sits: the system message with the tool catalogue (a profile's
fixed prefix) stays a token prefix of every turn's prompt, and a conversation's history
stays a prefix of its next turn (see scheduling/llm.py, which keeps it in the KV cache).
The catalogue lists every tool the model may ever call; what is callable this turn (a
grounded argument with candidates) is narrowed by the decision grammar, not by
rewriting the list.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import OrderedDict
from dataclasses import dataclass

from voxline.engines.base import ChatMessage, ToolSpec

END = "<|im_end|>"
OPEN_ASSISTANT = "<|im_start|>assistant\n"
PROSE = "message:"


def callable_tools(tools: list[ToolSpec] | None) -> list[ToolSpec]:
    """The tools that can be called now: none whose arguments allow no value (a grounded
    argument narrowed to an empty enum, because the caller has said no candidate)."""
    return [t for t in tools or [] if all(
        p.get("enum", None) != [] for p in t.parameters.get("properties", {}).values())]


def tool_catalogue(tools: list[ToolSpec]) -> str:
    lines = ["", "Functions you can call:"]
    for t in tools:
        props = t.parameters.get("properties", {})
        args = ", ".join(f"{k}: {v.get('type', 'string')}" for k, v in props.items())
        lines += [f"// {t.description}", f"functions.{t.name}({args})"]
    lines += [
        "",
        'To call a function, answer "functions.<name>:" and the JSON arguments. '
        f'To answer the caller directly, answer "{PROSE}" and your reply.',
    ]
    return "\n".join(lines)


def message_parts(m: ChatMessage, tool_format: bool) -> list[str]:
    """One message as prompt parts. An assistant message opens with its own part, so
    the tokens the model generated after the opener are the tokens it is re-read as."""
    if m.role == "assistant":
        if m.tool_calls:
            body = "\n".join(f"functions.{c['name']}: {c['arguments']}" for c in m.tool_calls)
        else:
            body = f"{PROSE} {m.content}" if tool_format else m.content
        return [OPEN_ASSISTANT, f"{body}{END}\n"]
    if m.role == "tool":
        return [f"<|im_start|>system\nResult of {m.name}: {m.content}{END}\n"]
    return [f"<|im_start|>{m.role}\n{m.content}{END}\n"]


@dataclass
class Program:
    """What the model is asked to produce after the prompt: `options` to choose from under
    a grammar ("functions.<name>:" or "message:"), or a `forced` opening (a named tool,
    or prose when no tool may be called) that goes into the prompt instead."""

    forced: str  # "" when the model chooses
    options: list[str]
    tools: dict[str, ToolSpec]  # by the option that calls each

    def tool(self, chosen: str) -> ToolSpec | None:
        return self.tools.get(chosen)


def prompt(messages: list[ChatMessage], tools: list[ToolSpec] | None,
           tool_choice: str) -> tuple[list[str], Program]:
    """The prompt parts and what follows them. `tools`: the whole catalogue (callable or
    not this turn); the first message is the system message they join."""
    catalogue = list(tools or [])
    tool_format = bool(catalogue)
    first = messages[0]
    system = ChatMessage(first.role, first.content + tool_catalogue(catalogue)) \
        if tool_format else first
    parts = [p for m in [system, *messages[1:]] for p in message_parts(m, tool_format)]
    parts.append(OPEN_ASSISTANT)
    if not tool_format:
        return parts, Program("", [], {})
    usable = {f"functions.{t.name}:": t for t in callable_tools(catalogue)}
    if tool_choice not in ("auto", "required", "none"):
        named = {k: t for k, t in usable.items() if t.name == tool_choice}
        if named:
            return parts, Program(next(iter(named)), [], named)
        tool_choice = "none"
    if tool_choice == "none" or not usable:
        return parts, Program(PROSE, [], {})
    options = list(usable) + ([PROSE] if tool_choice == "auto" else [])
    return parts, Program("", options, usable)


def argument_options(tool: ToolSpec, limit: int = 32) -> list[str] | None:
    """Every valid arguments text, when the schema allows few (each property required
    and an enum, nothing else allowed): the model then chooses among them, and the
    parts they share cost no decode step. None: free JSON under the schema."""
    schema = tool.parameters
    props = schema.get("properties", {})
    if schema.get("additionalProperties", True) is not False \
            or set(schema.get("required", [])) != set(props) \
            or not all(p.get("enum") for p in props.values()):
        return None
    if math.prod(len(p["enum"]) for p in props.values()) > limit:
        return None
    return [json.dumps(dict(zip(props, values, strict=True)))
            for values in itertools.product(*(p["enum"] for p in props.values()))]


def choice_grammar(options: list[str]) -> str:
    return "root ::= " + " | ".join(json.dumps(o) for o in options)


class GrammarCache:
    """GBNF text by key, least recently used dropped past `size`: a grammar per distinct
    set of spoken numbers would otherwise pile up for as long as the process runs."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str, make) -> str:  # type: ignore[no-untyped-def]
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = make()
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


def arguments_grammar(cache: GrammarCache, tool: ToolSpec) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = json.dumps(tool.parameters, sort_keys=True)
    return cache.get(schema, lambda: json_schema_to_gbnf(schema))
