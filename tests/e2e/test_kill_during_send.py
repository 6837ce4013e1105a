"""kill -9 of aftercall while its reply is in flight to Twilio: exactly one reply arrives.

The crash window random kills could not hit, held open on purpose. aftercall runs as
production runs it (``hypercorn -k trio web.app:app``, its own process group) on
PostgreSQL; the stand-ins and the test run in this process, so they outlive the kill.
The Twilio stand-in holds the reply's create request (``Fault.held``) while the test
checks that the outbox intent (``ReplyRequested``) is durable with no outcome, then kills
the whole server with SIGKILL and starts it again on the same log:

- created, then held (the message is in Twilio, aftercall never got the answer): the next
  process looks the reply up before sending (``followup/phone.py``, ``_reconcile`` over
  ``WhatsAppSender.find_sent``) and records ``ReplySent(reconciled=True)`` with the sid
  Twilio already had; the person gets the reply once.
- held before it was done (it never reached Twilio): the look-up finds nothing, and the
  reply is sent once, ``ReplySent(reconciled=False)``.

Every wait is on observable state (the event log through LISTEN/NOTIFY, the stand-in's
held requests and received messages), each under a deadline; no fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio

from events.calls import CallCompleted, call_event_id
from events.codec import to_new_event
from events.conversation import phone_stream
from events.postgres import open_postgres_store
from events.postgres_bridge import PostgresOptions
from events.store import EventStore, RecordedEvent
from sandbox.elevenlabs import DEFAULT_AGENT_ID, serve_elevenlabs
from sandbox.environment import free_port, stand_in_environment
from sandbox.twilio import Fault, HeldRequest, TwilioStandIn, serve_twilio
from tests.postgres_server import PostgresServer

PHONE = "+15551238888"
CALL_ID = "conv_kill_during_send"
QUESTION = "Has my refund of 20 euros gone out?"
#: Seconds any one wait may take (a server start, a restart's reconciliation).
WITHIN = 20
OUTCOMES = ("ReplySent", "ReplyFailed", "ReplyDelayed")


@attrs.frozen
class _Scene:
    """A PostgreSQL schema, the stand-ins, and aftercall to start on them as often as a
    test restarts it (the same port and settings each time)."""

    store: EventStore
    twilio: TwilioStandIn
    port: int
    env: dict[str, str]

    def start(self) -> subprocess.Popen[bytes]:
        """``hypercorn -k trio`` with its worker, in a process group of its own, so one
        SIGKILL takes the whole server down at once (a crash, an OOM kill)."""
        command = [sys.executable, "-m", "hypercorn", "-k", "trio",
                   "--bind", f"127.0.0.1:{self.port}", "web.app:app"]  # fmt: skip
        return subprocess.Popen(
            command, env=self.env, cwd=Path(__file__).parents[2], start_new_session=True
        )


@asynccontextmanager
async def _scene(postgres: PostgresServer, schema: str, tmp_path: Path) -> AsyncIterator[_Scene]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    # The server's store finds its schema through the DSN (asyncpg passes unknown query
    # parameters on as server settings); this process's store creates it first.
    separator = "&" if "?" in postgres.dsn else "?"
    async with (
        open_postgres_store(postgres.dsn, PostgresOptions(schema=schema)) as store,
        serve_elevenlabs() as el,
        serve_twilio() as tw,
    ):
        tw.webhook_url = f"{public}/webhooks/twilio/whatsapp"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AFTERCALL_") and k != "DATABASE_URL"
        }
        env.update(stand_in_environment(el, tw, public))
        env["DATABASE_URL"] = f"{postgres.dsn}{separator}search_path={schema}"
        env["AFTERCALL_DATA_DIR"] = str(tmp_path)
        yield _Scene(store, tw, port, env)


@contextmanager
def _sole_error() -> Iterator[None]:
    """Raise the one error under the exception groups around it: every nursery between the
    test's body and pytest (the store's, each stand-in's server's) wraps a failed assertion
    in a group of its own, deeper than tracebacks are printed."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves: list[BaseException] = []
        pending: list[BaseException] = [group]
        while pending:
            error = pending.pop()
            if isinstance(error, BaseExceptionGroup):
                pending.extend(error.exceptions)
            else:
                leaves.append(error)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


async def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server's process group (Hypercorn's parent and its worker) and reap it."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    await trio.to_thread.run_sync(partial(process.wait, WITHIN))


async def _until(
    store: EventStore, done: Callable[[list[RecordedEvent]], bool]
) -> list[RecordedEvent]:
    """The phone's stream once ``done`` holds for it (written by the server's process:
    the store is woken by its NOTIFY)."""
    with trio.fail_after(WITHIN):
        while True:
            head = await store.head()
            records = await store.read_stream(phone_stream(PHONE))
            if done(records):
                return records
            await store.wait_for_events(head)


def _count(type_: str, n: int) -> Callable[[list[RecordedEvent]], bool]:
    return lambda records: sum(r.type == type_ for r in records) >= n


def _outcomes(records: list[RecordedEvent], reply_id: str) -> list[RecordedEvent]:
    return [r for r in records if r.type in OUTCOMES and r.data["reply_id"] == reply_id]


def _settled(reply_id: str) -> Callable[[list[RecordedEvent]], bool]:
    return lambda records: bool(_outcomes(records, reply_id))


def _assert_every_message_answered_once(records: list[RecordedEvent]) -> None:
    """Nothing lost, nothing twice: each inbound message is answered by exactly one reply,
    and each reply (the first message too) was sent exactly once, part by part."""
    inbound = [r.data["message_sid"] for r in records if r.type == "MessageReceived"]
    requests = [r for r in records if r.type == "ReplyRequested"]
    answered = Counter(sid for r in requests for sid in r.data["in_reply_to"])
    assert {sid: answered[sid] for sid in inbound} == {sid: 1 for sid in inbound}
    for request in requests:
        outcomes = _outcomes(records, request.data["reply_id"])
        assert [(o.type, o.data["part"]) for o in outcomes] == [
            ("ReplySent", part) for part in range(len(request.data["parts"]))
        ]


@attrs.frozen
class _InFlight:
    """The reply the killed process was sending: its intent, and what Twilio had of it."""

    reply_id: str
    text: str
    #: The message Twilio created before holding the request (None: held before).
    created_sid: str | None
    held: HeldRequest


async def _kill_while_held(scene: _Scene, reached_twilio: bool) -> _InFlight:
    """Start aftercall, let the person ask a question, hold the answer's create request at
    Twilio, check the outbox intent is durable without an outcome, and SIGKILL aftercall."""
    store, tw = scene.store, scene.twilio
    call = CallCompleted(CALL_ID, DEFAULT_AGENT_ID, PHONE, "We talked about a refund.")
    await store.append(phone_stream(PHONE), [to_new_event(call, event_id=call_event_id(CALL_ID))])
    process = scene.start()
    try:
        # Resumed at start-up: the first message, sent and recorded. Hypercorn's worker
        # listens on the port before it loads the app, so the webhook below gets in.
        await _until(store, _count("ReplySent", 1))
        tw.inject(Fault.held(before_request=not reached_twilio), phone=PHONE)
        inbound_sid = await tw.user_says(PHONE, QUESTION)
        assert tw.deliveries[-1].status_code == 200, tw.deliveries[-1]
        with trio.fail_after(WITHIN):
            [held] = await tw.faults.wait_held(PHONE)

        # The send is in flight: the intent is durable, its outcome is not.
        records = await store.read_stream(phone_stream(PHONE))
        [intent] = [
            r for r in records
            if r.type == "ReplyRequested" and r.data["in_reply_to"] == [inbound_sid]
        ]  # fmt: skip
        reply_id, [text] = intent.data["reply_id"], intent.data["parts"]
        assert (held.method, held.fields.get("Body"), held.done) == ("POST", text, reached_twilio)
        assert _outcomes(records, reply_id) == []
        created = [m.sid for m in tw.received(PHONE) if m.body == text]
        assert len(created) == (1 if reached_twilio else 0)
    finally:
        await _kill(process)
    assert process.returncode == -signal.SIGKILL
    assert _outcomes(await store.read_stream(phone_stream(PHONE)), reply_id) == []
    return _InFlight(reply_id, text, created[0] if created else None, held)


@pytest.mark.parametrize("reached_twilio", [True, False], ids=["created", "not-created"])
async def test_kill_while_the_reply_is_held_at_twilio_sends_it_once(
    postgres: PostgresServer, pg_schema: str, tmp_path: Path, reached_twilio: bool
) -> None:
    with _sole_error():
        async with _scene(postgres, pg_schema, tmp_path) as scene:
            store, tw = scene.store, scene.twilio
            killed = await _kill_while_held(scene, reached_twilio)
            process = scene.start()
            try:
                records = await _until(store, _settled(killed.reply_id))
                outcomes = _outcomes(records, killed.reply_id)
                at_phone = [m.sid for m in tw.received(PHONE) if m.body == killed.text]
                # The killed process's request is still held: the stand-in never answered
                # it (and, held before it was done, never did it).
                held_now = tw.faults.holding(PHONE)

                # The conversation goes on in the new process.
                await tw.user_says(PHONE, "Thanks, and when will it arrive?")
                records = await _until(store, _count("ReplySent", 3))
            finally:
                await _kill(process)  # nothing is in flight any more

    # Found in Twilio and recorded as reconciled, or (never there) sent; either way once.
    assert [(o.type, o.data.get("reconciled")) for o in outcomes] == [("ReplySent", reached_twilio)]
    assert len(at_phone) == 1, f"the reply reached the phone {len(at_phone)} times"
    assert outcomes[0].data["message_sid"] == at_phone[0]
    if killed.created_sid is not None:
        assert at_phone == [killed.created_sid]  # the message created before the kill
    assert held_now == [killed.held]
    _assert_every_message_answered_once(records)
    bodies = [m.body for m in tw.received(PHONE)]
    assert len(bodies) == 3, bodies  # the first message and one answer per question
    assert bodies.count(killed.text) == 1
