"""kill -9 between an operator's message intent and its outcome: it reaches the person once.

An operator's message goes through the same outbox as the agent's replies
(``OperatorMessageRequested`` -> ``ReplyRequested(kind="operator")`` -> send -> outcome).
Here aftercall runs as production runs it, on PostgreSQL, in its own process group; the
Twilio stand-in holds the operator message's create request, the test checks the intent is
durable without an outcome, kills the server with SIGKILL and starts it again: the new
process looks the message up before sending (found: recorded as reconciled; never created:
sent once). The scene and its helpers are those of ``test_kill_during_send``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from events.calls import CallCompleted, call_event_id
from events.codec import to_new_event
from events.conversation import phone_stream
from sandbox.elevenlabs import DEFAULT_AGENT_ID
from sandbox.twilio import Fault
from tests.e2e.test_kill_during_send import (
    PHONE,
    WITHIN,
    _count,
    _kill,
    _outcomes,
    _scene,
    _settled,
    _sole_error,
    _until,
)
from tests.postgres_server import PostgresServer

TOKEN = "admin-token-for-the-kill-test"
TEXT = "Maria here: your refund went out this morning."


@pytest.mark.parametrize("reached_twilio", [True, False], ids=["created", "not-created"])
async def test_kill_while_an_operator_message_is_held_sends_it_once(
    postgres: PostgresServer, pg_schema: str, tmp_path: Path, reached_twilio: bool
) -> None:
    with _sole_error():
        async with _scene(postgres, pg_schema, tmp_path) as scene:
            store, tw = scene.store, scene.twilio
            scene.env["AFTERCALL_ADMIN_TOKEN"] = TOKEN
            call = CallCompleted("conv_operator_kill", DEFAULT_AGENT_ID, PHONE, "A refund.")
            await store.append(
                phone_stream(PHONE),
                [to_new_event(call, event_id=call_event_id("conv_operator_kill"))],
            )
            process = scene.start()
            try:
                await _until(store, _count("ReplySent", 1))
                await tw.user_says(PHONE, "Has my refund gone out?")  # the window opens
                await _until(store, _count("ReplySent", 2))
                tw.inject(Fault.held(before_request=not reached_twilio), phone=PHONE)
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{scene.port}",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as http:
                    answer = await http.post(
                        f"/api/conversations/{PHONE}/messages",
                        json={"text": TEXT, "operator": "Maria"},
                    )
                assert answer.status_code == 202, answer.text
                with trio.fail_after(WITHIN):
                    [held] = await tw.faults.wait_held(PHONE)
                records = await store.read_stream(phone_stream(PHONE))
                [intent] = [
                    r for r in records
                    if r.type == "ReplyRequested" and r.data["kind"] == "operator"
                ]  # fmt: skip
                reply_id = intent.data["reply_id"]
                assert (held.fields.get("Body"), held.done) == (TEXT, reached_twilio)
                assert _outcomes(records, reply_id) == []
            finally:
                await _kill(process)

            process = scene.start()
            try:
                records = await _until(store, _settled(reply_id))
                outcomes = _outcomes(records, reply_id)
                at_phone = [m.sid for m in tw.received(PHONE) if m.body == TEXT]
            finally:
                await _kill(process)

    assert [(o.type, o.data.get("reconciled")) for o in outcomes] == [("ReplySent", reached_twilio)]
    assert len(at_phone) == 1, f"the operator's message reached the phone {len(at_phone)} times"
    assert outcomes[0].data["message_sid"] == at_phone[0]
    assert intent.data["operator"] == "Maria"
    kinds = [r.data["kind"] for r in records if r.type == "ReplyRequested"]
    assert kinds == ["first_message", "agent", "operator"]
