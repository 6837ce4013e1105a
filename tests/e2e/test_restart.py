"""Stop aftercall between "reply requested" and "reply sent"; exactly one reply arrives.

aftercall runs as production runs it (``hypercorn -k trio web.app:app`` in its own
process), against stand-ins in the test process, on a SQLite log both processes read.
Killed with SIGKILL while its Twilio request is in flight, the next process on the same
log finds the intent without an outcome, looks the message up in Twilio and records it
instead of sending it again. Stopped with SIGTERM (a deploy, a container stop), the
actor finishes the message in hand and records the outcome itself before the process
exits, leaving nothing to reconcile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from events.calls import CallCompleted, call_event_id
from events.codec import to_new_event
from events.conversation import ReplyRequested, phone_stream
from events.sqlite import SQLiteEventStore, open_sqlite_store
from sandbox.elevenlabs import DEFAULT_AGENT_ID, serve_elevenlabs
from sandbox.environment import free_port, stand_in_environment
from sandbox.twilio import Fault, TwilioStandIn, serve_twilio

PHONE = "+15551239999"


@attrs.frozen
class _Scene:
    """A SQLite log on disk, the stand-ins, and aftercall to start on them, as often as a
    test restarts it (the same port and settings each time)."""

    store: SQLiteEventStore
    twilio: TwilioStandIn
    port: int
    env: dict[str, str]

    def start(self) -> subprocess.Popen[bytes]:
        """``hypercorn -k trio web.app:app`` in its own process group: Hypercorn runs the
        app in a worker child, and a kill must take the whole server down at once, as a
        crash or an OOM kill of the container would."""
        command = [sys.executable, "-m", "hypercorn", "-k", "trio",
                   "--bind", f"127.0.0.1:{self.port}", "web.app:app"]  # fmt: skip
        return subprocess.Popen(
            command, env=self.env, cwd=Path(__file__).parents[2], start_new_session=True
        )


@asynccontextmanager
async def _scene(tmp_path: Path) -> AsyncIterator[_Scene]:
    port = free_port()
    async with (
        open_sqlite_store(tmp_path / "events.sqlite3", poll_interval=0.05) as store,
        serve_elevenlabs() as el,
        serve_twilio() as tw,
    ):
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(stand_in_environment(el, tw, f"http://127.0.0.1:{port}"))
        env["AFTERCALL_DATA_DIR"] = str(tmp_path)
        yield _Scene(store, tw, port, env)


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
    process.wait(20)


async def _wait_for(store: SQLiteEventStore, type_: str) -> list[str]:
    """The phone's event types once ``type_`` is among them (written by another process:
    the SQLite store notices foreign commits on its poll interval)."""
    with trio.fail_after(30):
        while True:
            head = await store.head()
            types = [e.type for e in await store.read_stream(phone_stream(PHONE))]
            if type_ in types:
                return types
            await store.wait_for_events(head)


async def _call_completed(store: SQLiteEventStore, conversation_id: str, *then: Any) -> None:
    """The call the WhatsApp conversation follows, as the post-call webhook records it,
    and any events recorded after it (``then``)."""
    call = CallCompleted(conversation_id, DEFAULT_AGENT_ID, PHONE, "We talked about tea.")
    await store.append(
        phone_stream(PHONE),
        [to_new_event(call, event_id=call_event_id(conversation_id))]
        + [to_new_event(event) for event in then],
    )


async def test_kill_between_requested_and_sent_gives_one_reply(tmp_path: Path) -> None:
    async with _scene(tmp_path) as scene:
        store, tw = scene.store, scene.twilio
        await _call_completed(store, "conv_restart")
        # Twilio takes the first message at once but its answer is held back: the process
        # is killed while it waits, with the message at Twilio and no outcome in the log.
        tw.inject(Fault.answer_delayed(30.0), times=1)
        first = scene.start()
        try:
            await _wait_for(store, "ReplyRequested")
            with trio.fail_after(30):
                await tw.wait_received(PHONE)
        finally:
            _stop(first, signal.SIGKILL)
        assert "ReplySent" not in [e.type for e in await store.read_stream(phone_stream(PHONE))]

        second = scene.start()
        try:
            await _wait_for(store, "ReplySent")
        finally:
            _stop(second, signal.SIGTERM)
        [message] = tw.received(PHONE)
        records = await store.read_stream(phone_stream(PHONE))
        [sent] = [r for r in records if r.type == "ReplySent"]
        assert sent.data["reconciled"] is True
        assert sent.data["message_sid"] == message.sid


async def test_restart_with_an_unsent_intent_sends_it_once(tmp_path: Path) -> None:
    """The other side of the race: the process died before Twilio got the request."""
    async with _scene(tmp_path) as scene:
        store, tw = scene.store, scene.twilio
        intent = ReplyRequested(
            "r-unsent", "first_message", ("Hello after the crash",), datetime.now(UTC),
            call_conversation_id="conv_unsent",
        )  # fmt: skip
        await _call_completed(store, "conv_unsent", intent)
        process = scene.start()
        try:
            await _wait_for(store, "ReplySent")
        finally:
            _stop(process, signal.SIGTERM)
        assert [m.body for m in tw.received(PHONE)] == ["Hello after the crash"]


async def test_sigterm_lets_the_reply_in_flight_finish(tmp_path: Path) -> None:
    """A container runtime sends SIGTERM to the server's first process, Hypercorn's parent,
    which tells its worker to shut down; the actor has ``shutdown_timeout`` for the message
    in hand, so the held-back Twilio answer is waited for and recorded. The answer is held
    longer than Hypercorn's ``graceful_timeout`` (3 s, for open connections), which passes
    before the app's own shutdown starts: the send is still in flight when it does."""
    async with _scene(tmp_path) as scene:
        store, tw = scene.store, scene.twilio
        await _call_completed(store, "conv_sigterm")
        tw.inject(Fault.answer_delayed(6.0), times=1)
        process = scene.start()
        try:
            with trio.fail_after(30):
                await tw.wait_received(PHONE)
            os.kill(process.pid, signal.SIGTERM)  # the parent only, not the process group
            with trio.fail_after(30):
                exit_code = await trio.to_thread.run_sync(process.wait)
        finally:
            _stop(process, signal.SIGKILL)
        assert exit_code == 0
        [message] = tw.received(PHONE)
        records = await store.read_stream(phone_stream(PHONE))
        [sent] = [r for r in records if r.type == "ReplySent"]
        assert sent.data["reconciled"] is False
        assert sent.data["message_sid"] == message.sid
