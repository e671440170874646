"""Plain counters of one worker, bumped on the hot path at the cost of an integer add.

The metrics module copies them into Prometheus at scrape time; the hot path never touches
prometheus-client's multiprocess files (that cost echo throughput dearly when measured).
"""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass(slots=True)
class Stats:
    connections_active: int = 0
    connections_total: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    published: int = 0
    slow_consumers: int = 0
    broker_publish_errors: int = 0
    broker_local_only: int = 0
    rejected: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    closes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
