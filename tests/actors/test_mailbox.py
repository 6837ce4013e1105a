"""The mailbox on its own: order, backpressure, hand-off, close, cancellation."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.mailbox import Mailbox


async def test_first_in_first_out_and_bounded() -> None:
    mailbox: Mailbox[int] = Mailbox(2)
    mailbox.send_nowait(1)
    await mailbox.send(2)
    with pytest.raises(trio.WouldBlock):
        mailbox.send_nowait(3)
    assert mailbox.depth == 2
    assert [mailbox.receive_nowait(), await mailbox.receive()] == [1, 2]
    with pytest.raises(trio.WouldBlock):
        mailbox.receive_nowait()


async def test_a_waiting_receiver_gets_the_message_directly() -> None:
    mailbox: Mailbox[str] = Mailbox(1)
    got: list[str] = []

    async def receive() -> None:
        got.append(await mailbox.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.send_nowait("hello")
        assert mailbox.depth == 0  # handed over, not buffered
    assert got == ["hello"]


async def test_senders_wait_for_room_in_the_order_they_came() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.send_nowait(0)
    async with trio.open_nursery() as nursery:
        for n in (1, 2, 3):
            nursery.start_soon(mailbox.send, n)
            await trio.testing.wait_all_tasks_blocked()
        assert mailbox.waiting_senders == 3
        received = [await mailbox.receive() for _ in range(4)]
    assert received == [0, 1, 2, 3]
    assert mailbox.waiting_senders == 0


async def test_a_cancelled_send_leaves_nothing_behind() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.send_nowait(0)
    with trio.CancelScope() as scope:
        scope.cancel()
        await mailbox.send(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.send, 2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert mailbox.waiting_senders == 0
    assert mailbox.drain() == [0]


async def test_close_wakes_senders_with_an_error_and_the_receiver_after_the_rest() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.send_nowait(1)
    errors: list[type[BaseException]] = []

    async def send_late() -> None:
        try:
            await mailbox.send(2)
        except trio.ClosedResourceError as exc:
            errors.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_late)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.close()
    assert errors == [trio.ClosedResourceError]
    with pytest.raises(trio.ClosedResourceError):
        mailbox.send_nowait(3)
    assert await mailbox.receive() == 1
    with pytest.raises(trio.EndOfChannel):
        await mailbox.receive()


async def test_close_wakes_a_waiting_receiver() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    ended: list[bool] = []

    async def receive() -> None:
        try:
            await mailbox.receive()
        except trio.EndOfChannel:
            ended.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.close()
    assert ended == [True]


async def test_one_receiver_at_a_time() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await mailbox.receive()
        mailbox.send_nowait(1)


def test_capacity_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Mailbox(0)
