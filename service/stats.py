"""Plain counters of one worker, bumped on the hot path at the cost of an integer add.

The metrics module copies them into Prometheus (at scrape time, and once a second under
gunicorn); the hot path never touches prometheus-client's multiprocess files (that cost echo
throughput dearly when measured).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
from collections.abc import Sequence

SIZE_CLASSES = 64
"""Slots of `Stats.size_classes`: slot `(n - 1).bit_length()` counts messages of n bytes,
that is 2**(i-1) < n <= 2**i for slot i (an empty message lands in slot 1)."""

LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Upper bounds (seconds) of the publish-to-send latency buckets."""


class Distribution:
    """Observations counted per bucket in plain ints: a histogram without the locks."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, so the bucket's `le` holds it.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclasses.dataclass(slots=True)
class Stats:
    connections_active: int = 0
    connections_total: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    published: int = 0
    slow_consumers: int = 0
    rejected: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    closes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    # Inbound message sizes by power-of-two class (see SIZE_CLASSES); their sum is
    # bytes_received and their count messages_received.
    size_classes: list[int] = dataclasses.field(default_factory=lambda: [0] * SIZE_CLASSES)
    # Seconds from publish (Message.published_at, any worker or host) to the hand-off to
    # this worker's subscribers, one observation per message the hub delivers.
    delivery_latency: Distribution = dataclasses.field(
        default_factory=lambda: Distribution(LATENCY_BOUNDS)
    )
