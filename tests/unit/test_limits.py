"""Token bucket and per-address counter: fed numbers and clock readings, they answer yes or no."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from service.limits import AddressCounter, TokenBucket


def test_bucket_allows_the_burst_then_refuses() -> None:
    """A fresh bucket lets `burst` messages through at once, then refuses the next."""
    bucket = TokenBucket(rate=5, burst=10, now=0.0)
    assert all(bucket.allow(now=0.0) for _ in range(10))
    assert not bucket.allow(now=0.0)


def test_bucket_refills_at_rate() -> None:
    """Tokens come back at `rate` per second, never above the burst."""
    bucket = TokenBucket(rate=5, burst=10, now=0.0)
    for _ in range(10):
        bucket.allow(now=0.0)
    assert bucket.allow(now=0.2)  # one token after 1/5 s
    assert not bucket.allow(now=0.2)
    assert sum(bucket.allow(now=100.0) for _ in range(20)) == 10  # capped at the burst


def test_burst_below_the_rate_is_raised_to_one_second_of_messages() -> None:
    """WS_RATE_BURST=0 (or below the rate) still lets a steady sender at `rate` through."""
    bucket = TokenBucket(rate=20, burst=0, now=0.0)
    assert bucket.burst == 20
    assert TokenBucket(rate=0.5, burst=0, now=0.0).burst == 1


def test_steady_sender_at_the_rate_is_never_refused() -> None:
    """Messages spaced exactly 1/rate apart all pass for a long time."""
    bucket = TokenBucket(rate=10, burst=1, now=0.0)
    assert all(bucket.allow(now=i / 10) for i in range(1000))


@settings(max_examples=200, deadline=None, database=None)
@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=0, max_value=100),
    gaps=st.lists(st.floats(min_value=0, max_value=2), max_size=200),
)
def test_bucket_never_allows_more_than_burst_plus_refill(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Over any sequence of sends, allowed <= burst + rate * elapsed (the bucket's promise)."""
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += bucket.allow(now=now)
    assert allowed <= bucket.burst + rate * now + 1e-6


def test_address_counter_limits_each_address_separately() -> None:
    """Each address gets `limit` slots; releasing one frees it; others are unaffected."""
    counter = AddressCounter(2)
    assert counter.acquire("a") and counter.acquire("a")
    assert not counter.acquire("a")
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    counter.release("a")
    counter.release("a")
    counter.release("b")
    assert len(counter) == 0  # no entry left behind for addresses that went away


def test_address_counter_off_when_limit_is_zero() -> None:
    """WS_MAX_CONNECTIONS_PER_IP=0 admits everyone and keeps no state."""
    counter = AddressCounter(0)
    assert all(counter.acquire("a") for _ in range(1000))
    counter.release("a")
    assert len(counter) == 0
