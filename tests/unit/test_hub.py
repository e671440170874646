"""The hub and the memory broker: fan-out, ordering, subscription lifetime."""

from __future__ import annotations

import asyncio

from service.hub import Hub
from service.messages import Message
from service.pubsub.base import BrokerState
from service.pubsub.memory import MemoryBroker
from service.stats import Stats


class Recorder:
    """A subscriber that keeps what it is offered, up to `limit` (then refuses)."""

    def __init__(self, conn_id: str, limit: int = 10**9) -> None:
        self.conn_id = conn_id
        self.limit = limit
        self.got: list[bytes] = []

    def offer(self, message: Message) -> bool:
        if len(self.got) >= self.limit:
            return False
        self.got.append(message.data)
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
