"""What a scheduler did: batch sizes, queue waits, compute per batch, work dropped."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_KEEP = 20000  # recent samples kept for percentiles


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    dropped: int = 0  # partial transcripts dropped under load (never finals)
    sizes: Counter[int] = field(default_factory=Counter)
    queue_wait_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_KEEP))
    compute_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_KEEP))
    # Told of each batch (size, queue waits in ms): the Prometheus histograms.
    observe: Callable[[int, list[float]], None] | None = None

    def record(self, size: int, waits_ms: list[float], compute_ms: float) -> None:
        self.batches += 1
        self.items += size
        self.sizes[size] += 1
        self.queue_wait_ms.extend(waits_ms)
        self.compute_ms.append(compute_ms)
        if self.observe is not None:
            self.observe(size, waits_ms)

    def summary(self) -> dict[str, Any]:
        def pct(values: deque[float], q: float) -> float:
            return round(float(np.percentile(values, q)), 2) if values else 0.0

        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
            "batch_sizes": dict(sorted(self.sizes.items())),
            "queue_wait_ms_p50": pct(self.queue_wait_ms, 50),
            "queue_wait_ms_p95": pct(self.queue_wait_ms, 95),
            "compute_ms_p50": pct(self.compute_ms, 50),
            "compute_ms_p95": pct(self.compute_ms, 95),
            "compute_ms_total": round(float(sum(self.compute_ms)), 1),
            "dropped": self.dropped,
        }
