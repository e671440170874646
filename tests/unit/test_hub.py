"""The hub and the memory broker: fan-out, ordering, subscription lifetime."""

from __future__ import annotations

import asyncio

from service.hub import Hub
from service.messages import Batch, Message
from service.pubsub.base import BrokerState
from service.pubsub.memory import MemoryBroker
from service.stats import Stats


class Recorder:
    """A subscriber that keeps what it is offered, up to `limit` (then refuses)."""

    def __init__(self, conn_id: str, limit: int = 10**9) -> None:
        self.conn_id = conn_id
        self.limit = limit
        self.got: list[bytes] = []

    def offer(self, message: Message | Batch) -> bool:
        messages = message.messages if isinstance(message, Batch) else [message]
        if len(self.got) + len(messages) > self.limit:
            return False
        self.got.extend(m.data for m in messages)
        return True


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def started_hub() -> Hub:
    hub = Hub(broker=MemoryBroker(), stats=Stats())
    await hub.start()
    return hub


async def test_message_reaches_every_subscriber_of_its_channel_only() -> None:
    """A publish on `a` reaches a's subscribers and nobody on `b`."""
    hub = await started_hub()
    a1, a2, b1 = Recorder("a1"), Recorder("a2"), Recorder("b1")
    await hub.join("a", a1)
    await hub.join("a", a2)
    await hub.join("b", b1)
    hub.publish("a", Message.of("hi"))
    await settle()
    assert a1.got == a2.got == [b"hi"] and b1.got == []
    assert hub.stats.messages_sent == 2
    await hub.stop()


async def test_every_subscriber_sees_one_order() -> None:
    """Interleaved publishers still give all subscribers the same sequence."""
    hub = await started_hub()
    subs = [Recorder(str(i)) for i in range(20)]
    for sub in subs:
        await hub.join("room", sub)
    for i in range(200):
        hub.publish("room", Message.of(f"{i % 3}:{i}"))
        if i % 7 == 0:
            await asyncio.sleep(0)
    await settle()
    first = subs[0].got
    assert len(first) == 200
    assert all(sub.got == first for sub in subs)
    await hub.stop()


async def test_a_refusing_subscriber_does_not_stop_the_others() -> None:
    """One full subscriber is skipped; the rest still get every message."""
    hub = await started_hub()
    full, ok = Recorder("full", limit=1), Recorder("ok")
    await hub.join("c", full)
    await hub.join("c", ok)
    for i in range(5):
        hub.publish("c", Message.of(str(i)))
        await settle()
    assert len(full.got) == 1 and len(ok.got) == 5
    await hub.stop()


async def test_broker_subscription_follows_first_join_and_last_leave() -> None:
    """The broker subscribes once per channel and unsubscribes when it empties."""
    broker = MemoryBroker()
    hub = Hub(broker=broker, stats=Stats())
    await hub.start()
    one, two = Recorder("1"), Recorder("2")
    await hub.join("x", one)
    await hub.join("x", two)
    assert broker._channels == {"x"}
    await hub.leave("x", one)
    assert broker._channels == {"x"} and hub.subscribers("x") == 1
    await hub.leave("x", two)
    await hub.leave("x", two)  # leaving twice is harmless
    assert broker._channels == set() and hub.channels == 0
    hub.publish("x", Message.of("nobody"))
    await settle()
    assert one.got == [] and two.got == []
    await hub.stop()
    assert broker.state is BrokerState.CLOSED


async def test_memory_broker_is_up_once_connected() -> None:
    """Readiness depends on the broker state: memory is up after connect()."""
    broker = MemoryBroker()
    assert broker.state is BrokerState.CONNECTING and broker.problem
    await broker.connect()
    assert broker.state is BrokerState.UP and broker.problem == ""


async def test_waiting_messages_are_batched_per_channel_in_order() -> None:
    """Messages already queued reach a subscriber as one batch, in publish order."""
    hub = await started_hub()
    batches: list[int] = []

    class Counting(Recorder):
        def offer(self, message: Message | Batch) -> bool:
            batches.append(message.count)
            return super().offer(message)

    a, b = Counting("a"), Recorder("b")
    await hub.join("a", a)
    await hub.join("b", b)
    for i in range(10):
        hub.publish("a", Message.of(f"a{i}"))
        hub.publish("b", Message.of(f"b{i}"))
    await settle()
    assert a.got == [f"a{i}".encode() for i in range(10)]
    assert b.got == [f"b{i}".encode() for i in range(10)]
    assert batches == [10]  # one write for ten messages
    assert hub.stats.messages_sent == 20
    await hub.stop()
