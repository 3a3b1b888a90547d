"""How a client reaches a server: plain loopback, TLS, or mutual TLS, with an API key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

API_KEY_HEADER = "x-api-key"


@dataclass
class Connection:
    target: str  # HOST:PORT
    ca_file: Path | None = None  # TLS: the CA that signed the server's certificate
    cert_file: Path | None = None  # mutual TLS: this client's certificate and key
    key_file: Path | None = None
    api_key: str = field(default="", repr=False)  # never printed

    @classmethod
    def of(cls, target: str | Connection) -> Connection:
        return target if isinstance(target, Connection) else cls(target)

    @classmethod
    def from_args(cls, target: str, ca: Path | None, cert: Path | None, key: Path | None,
                  api_key_env: str) -> Connection:
        return cls(target, ca, cert, key, os.environ.get(api_key_env, "") if api_key_env else "")

    def channel(self) -> grpc.aio.Channel:
        if self.ca_file is None and self.cert_file is None:
            return grpc.aio.insecure_channel(self.target)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )
        return grpc.aio.secure_channel(self.target, creds)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((API_KEY_HEADER, self.api_key),) if self.api_key else ()
