"""What the Triton engines share: one model on a Triton Inference Server, reached over
gRPC with `tritonclient`, with bounded timeouts and errors that say what to fix.

Batching is Triton's: several utterances go out as concurrent requests and Triton's
dynamic batcher joins them (and the requests of other Voxline processes) into one
model run. The model side (what runs inside Triton) is in triton_backend.py."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from voxline.engines.repository import ModelError

# tritonclient's own defaults for message sizes (audio can be megabytes), plus a short
# reconnect backoff: gRPC otherwise waits up to 2 minutes before retrying a Triton that
# was down, and every request in between fails.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class TritonError(RuntimeError):
    """Triton is down, lacks the model, or failed a request."""


class TritonTimeout(TritonError, TimeoutError):
    """A request took longer than the manifest's timeout_s."""


def triton_url(url: str, url_env: str | None) -> str:
    """host:port, from the environment variable `url_env` when it is set (one manifest, a
    different Triton per deployment)."""
    url = os.environ.get(url_env or "", "") or url
    return url.removeprefix("grpc://").rstrip("/")


class TritonModel:
    """One model on one Triton server. Thread-safe: requests share one gRPC channel."""

    def __init__(self, url: str, model: str, url_env: str | None = None,
                 timeout_s: float = 10.0, connect_timeout_s: float = 3.0) -> None:
        self.url = triton_url(url, url_env)
        self.name = model
        self.timeout_s = float(timeout_s)
        self._url_env = url_env
        self._client = grpcclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
        try:
            ready = self._client.is_model_ready(model, client_timeout=connect_timeout_s)
            if not ready:
                raise ModelError(
                    f"Triton at {self.url} has no model '{model}' ready: export it with "
                    "scripts/triton_export.py into the repository Triton serves, or fix "
                    "`model` in the manifest")
            self.config: dict[str, Any] = self._client.get_model_config(
                model, as_json=True, client_timeout=connect_timeout_s)["config"]
        except InferenceServerException as exc:  # at load time: the model cannot load
            raise ModelError(str(self._error(exc, "connecting"))) from exc

    def parameter(self, key: str, default: str = "") -> str:
        """A `parameters` entry of the model's config.pbtxt."""
        entry = self.config.get("parameters", {}).get(key) or {}
        return str(entry.get("string_value", default))

    def infer_many(self, requests: Sequence[list[grpcclient.InferInput]]
                   ) -> list[grpcclient.InferResult]:
        """Send every request at once and wait for all of them (timeout_s in all)."""
        futures: list[Future[grpcclient.InferResult]] = [Future() for _ in requests]
        calls = []
        try:
            for inputs, future in zip(requests, futures, strict=True):
                calls.append(self._client.async_infer(
                    self.name, inputs, partial(_settle, future),
                    client_timeout=self.timeout_s))
            return [f.result(timeout=self.timeout_s + 1.0) for f in futures]
        except FutureTimeout as exc:
            raise TritonTimeout(f"Triton at {self.url}, model '{self.name}': no answer "
                                f"within {self.timeout_s:g} s") from exc
        except InferenceServerException as exc:
            raise self._error(exc, "inference") from exc
        finally:
            for call in calls:  # a failed batch: drop what is still in flight
                call.cancel()

    def counts(self) -> tuple[int, int]:
        """From Triton's statistics of this model: inferences (requests' batch rows) and
        executions (model runs); more inferences than executions is batching at work."""
        try:
            stats = self._client.get_inference_statistics(
                self.name, as_json=True, client_timeout=self.timeout_s)["model_stats"][0]
        except InferenceServerException as exc:
            raise self._error(exc, "statistics") from exc
        # JSON leaves out zero counts
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    def close(self) -> None:
        self._client.close()

    def _error(self, exc: InferenceServerException, what: str) -> TritonError:
        status = str(exc.status() or "")
        where = f"Triton at {self.url}, model '{self.name}'"
        if "DEADLINE_EXCEEDED" in status:
            return TritonTimeout(f"{where}: {what} took longer than {self.timeout_s:g} s")
        if "UNAVAILABLE" in status:
            override = f" (or set {self._url_env})" if self._url_env else ""
            return TritonError(f"{where}: not reachable ({exc.message()}); start it with "
                               f"scripts/triton_server.sh or fix `url` in the manifest"
                               f"{override}")
        return TritonError(f"{where}: {what} failed: {exc.message()}")


def _settle(future: Future, result: grpcclient.InferResult | None,
            error: InferenceServerException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    """One input tensor (the array's first axis is Triton's batch axis)."""
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t
