"""The SQLite writer queue: one writer at a time, rotated tokens first, cancellation passes the turn on."""

from __future__ import annotations

import asyncio

import pytest

from refresher.store.writers import NORMAL, URGENT, WriterQueue


async def test_one_writer_at_a_time_urgent_first_then_arrival_order() -> None:
    queue = WriterQueue()
    order: list[str] = []
    inside = 0
    gate = asyncio.Event()

    async def writer(name: str, priority: int, hold: asyncio.Event | None = None) -> None:
        nonlocal inside
        async with queue.turn(priority):
            inside += 1
            assert inside == 1, "two writers at once"
            order.append(name)
            if hold is not None:
                await hold.wait()
            await asyncio.sleep(0)
            inside -= 1

    first = asyncio.create_task(writer("first", NORMAL, gate))
    await asyncio.sleep(0)
    waiting = [
        asyncio.create_task(writer("normal-1", NORMAL)),
        asyncio.create_task(writer("normal-2", NORMAL)),
        asyncio.create_task(writer("urgent", URGENT)),
    ]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *waiting)
    assert order == ["first", "urgent", "normal-1", "normal-2"]


async def test_a_cancelled_waiter_does_not_keep_the_turn() -> None:
    queue = WriterQueue()
    gate = asyncio.Event()

    async def holder() -> None:
        async with queue.turn():
            await gate.wait()

    async def waiter() -> None:
        async with queue.turn():
            pass

    task = asyncio.create_task(holder())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    await task
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.wait_for(waiter(), 1)  # the queue is free again
