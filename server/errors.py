"""The one error a request ends with when it cannot be served, on every service
(Converse, the Riva services, the operator RPCs): a gRPC status and a message that
says what to fix. Raised where the problem is found; turned into the status once, at
the RPC's edge."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)
