"""Who may place a call and whether there is room: per-tenant API keys, the server's and
each tenant's concurrent-call limits, and refusal while draining."""

from __future__ import annotations

import hmac
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import grpc

from voxline.client.connect import API_KEY_HEADER
from voxline.config import Settings, Tenant
from voxline.errors import ServiceError

RETRY_HEADER = "grpc-retry-pushback-ms"  # honoured by gRPC clients' retry policies


class ConfigError(RuntimeError):
    pass


def read_secret(where: str, file: Path | None, env: str, what: str) -> str:
    """A secret (API key, password, auth token) from its file or environment variable,
    never from the config itself; ConfigError saying which when it cannot be read."""
    if file is not None:
        try:
            secret = file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {what}_file: {exc}") from exc
    elif env:
        secret = os.environ.get(env, "").strip()
        if not secret:
            raise ConfigError(f"{where}: environment variable {env} is not set")
    else:
        raise ConfigError(f"{where}: set {what}_env or {what}_file")
    if not secret:
        raise ConfigError(f"{where}: the {what} is empty")
    return secret


def _read_key(t: Tenant) -> str:
    """A tenant's key from its environment variable or file (never from the config)."""
    key = read_secret(f"tenant '{t.name}'", t.api_key_file, t.api_key_env, "api_key")
    if len(key) < 16:
        raise ConfigError(f"tenant '{t.name}': API key shorter than 16 characters")
    return key


class Rejected(ServiceError):
    """A refused call, with the reason counted in metrics."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(code, message)
        self.reason = reason
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_s is None:
            return ()
        return ((RETRY_HEADER, str(int(self.retry_after_s * 1000))),)


class Gate:
    def __init__(self, settings: Settings) -> None:
        self.limits = settings.limits
        self.tenants = {t.name: t for t in settings.auth.tenants}
        if len(self.tenants) != len(settings.auth.tenants):
            raise ConfigError("auth.tenants: tenant names must be unique")
        for t in settings.auth.tenants:
            # An empty list is refused, not read as "all": a tenant added without
            # thought must not reach every line's agent.
            if t.role == "tenant" and not t.profiles:
                raise ConfigError(f"tenant '{t.name}': list the agent profiles it may use "
                                  "in `profiles` (or \"*\" for all)")
        self._keys = [(t.name, _read_key(t).encode()) for t in settings.auth.tenants]
        self.active: Counter[str] = Counter()
        self.draining = False

    @property
    def total(self) -> int:
        return sum(self.active.values())

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The caller's tenant ("" when no tenants are configured)."""
        if not self._keys:
            return ""
        given = ""
        for key, value in metadata or ():
            if key == API_KEY_HEADER:
                given = value if isinstance(value, str) else value.decode(errors="replace")
            elif key == "authorization" and isinstance(value, str) and \
                    value.lower().startswith("bearer "):
                given = value[7:]
        if not given:
            raise Rejected(grpc.StatusCode.UNAUTHENTICATED,
                           f"missing API key: send it as '{API_KEY_HEADER}' call metadata",
                           "unauthenticated")
        match = self.identify(given)
        if match is None:
            raise Rejected(grpc.StatusCode.UNAUTHENTICATED, "API key not recognised",
                           "unauthenticated")
        return match

    def identify(self, given: str) -> str | None:
        """The tenant whose key this is, or None. Compared against every key in constant
        time, so timing tells nothing."""
        match = None
        for name, key in self._keys:
            if hmac.compare_digest(key, given.encode()):
                match = name
        return match

    def is_operator(self, tenant: str) -> bool:
        own = self.tenants.get(tenant)
        return own is not None and own.role == "operator"

    def may_use(self, tenant: str, profile: str) -> bool:
        """Whether the tenant's calls may use the agent profile (resolve an empty
        CallStart.agent_profile to the default profile before asking)."""
        if not self.tenants:
            return True
        own = self.tenants.get(tenant)
        if own is None:
            return False  # an authenticated name is always known; refuse anything else
        return own.role == "operator" or "*" in own.profiles or profile in own.profiles

    def require_operator(self, tenant: str) -> None:
        """Server-wide information and actions (GetServerInfo, ReloadModels) are for
        operators: a tenant's key must not see other tenants' load or swap models."""
        if not self.tenants:
            return
        own = self.tenants.get(tenant)
        if own is None or own.role != "operator":
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                           f"tenant '{tenant}' is not an operator: server information and "
                           "model reload need an operator key (a tenant with role: "
                           "operator in auth.tenants)", "forbidden")

    def admit(self, tenant: str) -> None:
        """Take a call slot for the tenant, or refuse at once."""
        if self.draining:
            raise Rejected(grpc.StatusCode.UNAVAILABLE,
                           "server is draining for shutdown; place the call on another "
                           "replica", "draining", self.limits.retry_after_s)
        limit = self.limits.max_concurrent_calls
        if self.total >= limit:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"server is at its limit of {limit} concurrent calls; retry in "
                           f"{self.limits.retry_after_s:g} s or on another replica",
                           "server_limit", self.limits.retry_after_s)
        own = self.tenants.get(tenant)
        if own is not None and own.max_concurrent_calls is not None \
                and self.active[tenant] >= own.max_concurrent_calls:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"tenant '{tenant}' is at its limit of {own.max_concurrent_calls} "
                           f"concurrent calls; retry in {self.limits.retry_after_s:g} s",
                           "tenant_limit", self.limits.retry_after_s)
        self.active[tenant] += 1

    def release(self, tenant: str) -> None:
        self.active[tenant] -= 1
