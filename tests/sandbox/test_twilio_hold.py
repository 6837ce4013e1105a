"""Held requests: the stand-in keeps an API request waiting until it is released.

The fault behind tests/e2e/test_kill_during_send.py: a create held after it was done (the
message exists, the client has no answer) or before (nothing reached Twilio), for as long
as a test needs to kill the client in between.
"""

from __future__ import annotations

from functools import partial

import httpx
import trio

from sandbox.twilio import Fault, TwilioStandIn, serve_twilio

USER = "+15551234567"
OTHER = "+447700900123"


def _api(twilio: TwilioStandIn) -> httpx.AsyncClient:
    assert twilio.base_url is not None
    return httpx.AsyncClient(
        base_url=f"{twilio.base_url}/2010-04-01/Accounts/{twilio.account_sid}",
        auth=(twilio.account_sid, twilio.auth_token),
    )


def _form(twilio: TwilioStandIn, to: str = USER, body: str = "hello") -> dict[str, str]:
    return {"To": f"whatsapp:{to}", "From": twilio.whatsapp_from, "Body": body}


async def test_held_create_exists_but_is_answered_only_when_released() -> None:
    answers: list[httpx.Response] = []
    with trio.fail_after(10):
        async with serve_twilio() as twilio, _api(twilio) as client, _api(twilio) as other:
            twilio.inject(Fault.held(), phone=USER)

            async def create() -> None:
                answers.append(await client.post("/Messages.json", data=_form(twilio)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(create)
                [held] = await twilio.faults.wait_held(USER)
                # Done before it was held: Twilio has the message, the client has no answer.
                assert (held.method, held.phone, held.done) == ("POST", USER, True)
                assert held.fields["Body"] == "hello"
                [message] = twilio.received(USER)
                listed = await other.get("/Messages.json", params={"To": f"whatsapp:{USER}"})
                fetched = await other.get(f"/Messages/{message.sid}.json")
                assert answers == []
                assert twilio.faults.release(OTHER) == 0
                assert twilio.faults.release() == 1
                assert twilio.faults.held == []
    [answer] = answers
    assert answer.status_code == 201
    assert answer.json()["sid"] == message.sid
    assert [m["sid"] for m in listed.json()["messages"]] == [message.sid]
    assert fetched.status_code == 200
    assert len(twilio.messages) == 1


async def test_held_before_the_request_creates_nothing_until_released() -> None:
    answers: list[httpx.Response] = []
    with trio.fail_after(10):
        async with serve_twilio() as twilio, _api(twilio) as client:
            twilio.inject(Fault.held(before_request=True))

            async def create() -> None:
                answers.append(await client.post("/Messages.json", data=_form(twilio)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(create)
                [held] = await twilio.faults.wait_held()
                assert held.done is False
                assert twilio.messages == {}
                assert answers == []
                assert twilio.faults.release(USER) == 1
    [answer] = answers
    assert answer.status_code == 201
    [message] = twilio.received(USER)
    assert answer.json()["sid"] == message.sid


async def test_a_request_held_when_the_standin_stops_is_never_done() -> None:
    """The client gave up (it was killed) and nobody released the request: it never
    reaches Twilio, and the stand-in still stops at once."""
    with trio.fail_after(10):
        async with serve_twilio() as twilio, _api(twilio) as client:
            twilio.inject(Fault.held(before_request=True), times=None, phone=USER)
            async with trio.open_nursery() as nursery:
                for body in ("hello", "again"):
                    nursery.start_soon(
                        partial(client.post, "/Messages.json", data=_form(twilio, body=body))
                    )
                    await twilio.faults.wait_held(USER, count=1 if body == "hello" else 2)
                held = twilio.faults.holding(USER)
                nursery.cancel_scope.cancel()  # the client is gone; nobody releases
            still_held = len(twilio.faults.held)
            spared = await client.post("/Messages.json", data=_form(twilio, OTHER))
    assert [h.fields["Body"] for h in held] == ["hello", "again"]
    assert spared.status_code == 201
    assert still_held == 2
    assert twilio.received(USER) == []
    assert twilio.faults.held == []


async def test_control_api_arms_lists_and_releases_held_requests() -> None:
    answers: list[httpx.Response] = []
    with trio.fail_after(10):
        async with (
            serve_twilio() as twilio,
            _api(twilio) as client,
            httpx.AsyncClient(base_url=f"{twilio.base_url}/_sandbox") as control,
        ):
            armed = await control.post("/faults", json={"kind": "held", "phone": USER})
            listed = (await control.get("/faults")).json()["faults"]
            bad = await control.post("/faults", json={"kind": "held", "before_request": "yes"})

            async def create() -> None:
                answers.append(await client.post("/Messages.json", data=_form(twilio)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(create)
                await twilio.faults.wait_held(USER)
                held = (await control.get("/held")).json()["held"]
                bad_phone = await control.post("/held/release", json={"phone": "nope"})
                not_other = (await control.post("/held/release", json={"phone": OTHER})).json()
                released = (await control.post("/held/release", json={})).json()
            after = (await control.get("/held")).json()["held"]
    assert armed.status_code == 201
    assert (listed[0]["kind"], listed[0]["before_request"], listed[0]["phone"]) == (
        "held",
        False,
        USER,
    )
    assert bad.status_code == 400
    [request] = held
    assert request["method"] == "POST"
    assert request["path"].endswith("/Messages.json")
    assert (request["phone"], request["done"], request["fields"]["Body"]) == (USER, True, "hello")
    assert bad_phone.status_code == 400
    assert (not_other, released) == ({"released": 0}, {"released": 1})
    assert after == []
    assert [a.status_code for a in answers] == [201]
