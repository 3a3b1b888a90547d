"""Registering servicers so that every RPC answers a request it cannot parse with
INVALID_ARGUMENT. grpc-python's asyncio server parses a unary request before the
handler runs and answers a parse failure with UNKNOWN (and an error in the log); here
unary handlers take the raw bytes and parse them themselves. Streaming handlers parse
as they read, and say INVALID_ARGUMENT already."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError


def add_servicer(server: grpc.aio.Server, add: Callable[[Any, Any], None],
                 servicer: object) -> None:
    """`add` is a generated add_...Servicer_to_server."""
    add(servicer, _Wrapping(server))


class _Wrapping:
    """Stands in for the server while a generated function registers a servicer."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Generic(h) for h in handlers))

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: parsed_here(h) for name, h in handlers.items()})


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        if method not in self._cache:
            found = self._inner.service(details)
            if found is None:
                return None
            self._cache[method] = parsed_here(found)
        return self._cache[method]


def parsed_here(h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if h.request_streaming or h.response_streaming or h.request_deserializer is None:
        return h
    parse, behaviour = h.request_deserializer, h.unary_unary
    kind = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    name = kind.full_name if kind is not None else "request"

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            request = parse(raw)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid {name} ({exc})")
        return await behaviour(request, context)

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=h.response_serializer)
