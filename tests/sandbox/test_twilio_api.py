"""The stand-in's REST API over real sockets: create, errors, fetch, list, faults."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from functools import partial

import httpx
import pytest
import trio

from sandbox.twilio import Fault, TwilioStandIn, serve_twilio

USER = "+15551234567"
OTHER = "+447700900123"


def api(twilio: TwilioStandIn) -> httpx.AsyncClient:
    """A client authenticated as the stand-in's account, rooted at its Messages URL."""
    assert twilio.base_url is not None
    return httpx.AsyncClient(
        base_url=f"{twilio.base_url}/2010-04-01/Accounts/{twilio.account_sid}",
        auth=(twilio.account_sid, twilio.auth_token),
    )


def send_form(twilio: TwilioStandIn, to: str = USER, body: str = "hello") -> dict[str, str]:
    return {"To": f"whatsapp:{to}", "From": twilio.whatsapp_from, "Body": body}


async def test_create_answers_201_with_the_documented_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            response = await client.post("/Messages.json", data=send_form(twilio))
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.headers["twilio-request-id"].startswith("RQ")
    message = response.json()
    assert re.fullmatch(r"SM[0-9a-f]{32}", message["sid"])
    assert message["status"] == "queued"
    assert message["direction"] == "outbound-api"
    assert (message["to"], message["from"]) == (f"whatsapp:{USER}", twilio.whatsapp_from)
    assert (message["num_media"], message["num_segments"]) == ("0", "1")
    assert message["date_sent"] is None
    assert parsedate_to_datetime(message["date_created"]).utcoffset() is not None
    assert message["error_code"] is None
    assert message["uri"].endswith(f"/Messages/{message['sid']}.json")
    assert message["subresource_uris"]["media"].endswith(f"/Messages/{message['sid']}/Media.json")
    assert len(message) == 20


@pytest.mark.parametrize(
    "auth",
    [None, ("AC" + "0" * 32, "wrong"), ("wrong-sid", "x")],
)
async def test_bad_credentials_answer_401_with_20003(auth: tuple[str, str] | None) -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, httpx.AsyncClient() as http:
            url = f"{twilio.base_url}/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
            if auth is not None and auth[0].startswith("AC"):
                auth = (twilio.account_sid, auth[1])
            if auth is None:
                response = await http.post(url, data=send_form(twilio))
            else:
                response = await http.post(url, data=send_form(twilio), auth=auth)
    assert response.status_code == 401
    assert response.json() == {
        "code": 20003,
        "detail": "Your AccountSid or AuthToken was incorrect.",
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert twilio.auth_token not in response.text
    assert twilio.messages == {}


async def test_another_accounts_url_is_refused_even_with_good_credentials() -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, httpx.AsyncClient() as http:
            url = f"{twilio.base_url}/2010-04-01/Accounts/AC{'9' * 32}/Messages.json"
            response = await http.post(
                url, data=send_form(twilio), auth=(twilio.account_sid, twilio.auth_token)
            )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"To": "whatsapp:5551234567"}, 21211),
        ({"Body": ""}, 21602),
        ({"Body": "x" * 1601}, 21617),
        ({"ContentVariables": '{"1": "x"}'}, 21654),
    ],
)
async def test_create_errors_in_twilio_shape(change: dict[str, str], code: int) -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            response = await client.post("/Messages.json", data={**send_form(twilio), **change})
    assert response.status_code == 400
    error = response.json()
    assert set(error) == {"code", "message", "more_info", "status"}
    assert (error["code"], error["status"]) == (code, 400)
    assert error["more_info"] == f"https://www.twilio.com/docs/errors/{code}"


async def test_template_renders_from_content_variables(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            sid = twilio.register_template("Hi {{1}}, we spoke on {{2}}.")
            form = {
                "To": f"whatsapp:{USER}",
                "From": twilio.whatsapp_from,
                "ContentSid": sid,
                "ContentVariables": '{"1": "Ada", "2": "Monday"}',
            }
            response = await client.post("/Messages.json", data=form)
    assert response.status_code == 201
    assert response.json()["body"] == "Hi Ada, we spoke on Monday."


async def test_fetch_and_list_let_a_client_reconcile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            first = (await client.post("/Messages.json", data=send_form(twilio))).json()
            await trio.sleep(1)
            second = (await client.post("/Messages.json", data=send_form(twilio))).json()
            other = (await client.post("/Messages.json", data=send_form(twilio, OTHER))).json()
            await trio.sleep(5)  # every status has settled

            fetched = (await client.get(f"/Messages/{first['sid']}.json")).json()
            missing = await client.get(f"/Messages/SM{'0' * 32}.json")

            page = (
                await client.get("/Messages.json", params={"To": f"whatsapp:{USER}", "PageSize": 1})
            ).json()
            next_page = (await client.get(twilio.base_url + page["next_page_uri"])).json()
            by_sender = (
                await client.get("/Messages.json", params={"From": twilio.whatsapp_from})
            ).json()
            today = fetched["date_created"]
            sent_day = parsedate_to_datetime(today).date().isoformat()
            by_day = (await client.get("/Messages.json", params={"DateSent": sent_day})).json()

    assert fetched["sid"] == first["sid"]
    assert fetched["status"] == "failed"  # no inbound message ever opened the window
    assert fetched["error_code"] == 63016
    assert missing.status_code == 404
    assert missing.json()["code"] == 20404
    assert [m["sid"] for m in page["messages"]] == [second["sid"]]
    assert page["page"] == 0
    assert page["page_size"] == 1
    assert page["previous_page_uri"] is None
    assert set(page) == {
        "end",
        "first_page_uri",
        "messages",
        "next_page_uri",
        "page",
        "page_size",
        "previous_page_uri",
        "start",
        "uri",
    }
    assert [m["sid"] for m in next_page["messages"]] == [first["sid"]]
    assert next_page["next_page_uri"] is None
    assert len(by_sender["messages"]) == 3
    assert {m["sid"] for m in by_sender["messages"]} == {first["sid"], second["sid"], other["sid"]}
    # Failed messages were never sent: no date_sent, so a DateSent filter leaves them out.
    assert by_day["messages"] == []


async def test_date_sent_filter_finds_sent_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            twilio.last_inbound[USER] = twilio.clock.now()  # the user wrote just now
            created = (await client.post("/Messages.json", data=send_form(twilio))).json()
            await trio.sleep(5)
            fetched = (await client.get(f"/Messages/{created['sid']}.json")).json()
            day = parsedate_to_datetime(fetched["date_sent"]).date().isoformat()
            found = (await client.get("/Messages.json", params={"DateSent": day})).json()
            later = (await client.get("/Messages.json", params={"DateSent>": "2999-01-01"})).json()
    assert fetched["status"] == "read"
    assert [m["sid"] for m in found["messages"]] == [created["sid"]]
    assert later["messages"] == []


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "status", "code", "retry_after"),
    [
        (Fault.rate_limited(retry_after=3), 429, 20429, "3"),
        (Fault.rate_limited(), 429, 20429, None),
        (Fault.server_error(500), 500, 20500, None),
        (Fault.server_error(503), 503, 20503, None),
    ],
)
async def test_http_faults_answer_with_twilio_errors(
    fault: Fault, status: int, code: int, retry_after: str | None
) -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            twilio.inject(fault)
            faulted = await client.post("/Messages.json", data=send_form(twilio))
            after = await client.post("/Messages.json", data=send_form(twilio))
    assert faulted.status_code == status
    assert faulted.json()["code"] == code
    assert faulted.headers.get("retry-after") == retry_after
    assert after.status_code == 201
    assert len(twilio.messages) == 1  # the faulted request created nothing


async def test_fault_for_the_next_n_requests() -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            twilio.inject(Fault.server_error(503), times=2)
            statuses = [
                (await client.post("/Messages.json", data=send_form(twilio))).status_code
                for _ in range(3)
            ]
    assert statuses == [503, 503, 201]


async def test_fault_per_phone_spares_other_phones() -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            twilio.inject(Fault.rate_limited(retry_after=1), times=None, phone=USER)
            to_user = [
                (await client.post("/Messages.json", data=send_form(twilio))).status_code
                for _ in range(2)
            ]
            to_other = await client.post("/Messages.json", data=send_form(twilio, OTHER))
            listing = await client.get("/Messages.json", params={"To": f"whatsapp:{USER}"})
            unfiltered = await client.get("/Messages.json")
            twilio.clear_faults()
            cleared = await client.post("/Messages.json", data=send_form(twilio))
    assert to_user == [429, 429]
    assert to_other.status_code == 201
    assert listing.status_code == 429
    assert unfiltered.status_code == 200
    assert cleared.status_code == 201


async def test_slow_fault_delays_the_answer(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with serve_twilio() as twilio, api(twilio) as client:
            twilio.inject(Fault.slow(30.0))
            started = trio.current_time()
            response = await client.post(
                "/Messages.json", data=send_form(twilio), timeout=httpx.Timeout(60.0)
            )
            took = trio.current_time() - started
    assert response.status_code == 201
    assert 30.0 <= took < 31.0


async def test_slow_fault_trips_a_client_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with serve_twilio() as twilio, api(twilio) as client:
            twilio.inject(Fault.slow(30.0))
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/Messages.json", data=send_form(twilio), timeout=5.0)


async def test_dropped_connection_closes_without_a_response() -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            twilio.inject(Fault.dropped())
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await client.post("/Messages.json", data=send_form(twilio))
            after = await client.post("/Messages.json", data=send_form(twilio))
    assert after.status_code == 201
    assert len(twilio.messages) == 1


async def test_control_api_arms_and_clears_faults_and_is_never_faulted() -> None:
    with trio.fail_after(10):
        async with (
            serve_twilio() as twilio,
            api(twilio) as client,
            httpx.AsyncClient(base_url=f"{twilio.base_url}/_sandbox") as control,
        ):
            armed = await control.post(
                "/faults", json={"kind": "rate_limited", "retry_after": 2, "times": None}
            )
            listed = (await control.get("/faults")).json()
            faulted = await client.post("/Messages.json", data=send_form(twilio))
            bad = await control.post("/faults", json={"kind": "meteor"})
            await control.delete("/faults")
            cleared = await client.post("/Messages.json", data=send_form(twilio))
    assert armed.status_code == 201
    assert listed["faults"][0]["kind"] == "http"
    assert listed["faults"][0]["times"] is None
    assert (faulted.status_code, faulted.headers["retry-after"]) == (429, "2")
    assert bad.status_code == 400
    assert cleared.status_code == 201


async def test_answer_delayed_creates_the_message_before_answering() -> None:
    """The fault behind the outbox test: Twilio has the message, the client has no answer."""
    async with serve_twilio(TwilioStandIn()) as tw:
        tw.last_inbound["+15550001111"] = tw.clock.now()
        tw.inject(Fault.answer_delayed(30.0))
        url = f"{tw.base_url}/2010-04-01/Accounts/{tw.account_sid}/Messages.json"
        form = {"To": "whatsapp:+15550001111", "From": tw.whatsapp_from, "Body": "hi"}
        async with httpx.AsyncClient(auth=(tw.account_sid, tw.auth_token)) as http:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(http.post, url, data=form))
                    [message] = await tw.wait_received("+15550001111")
                    assert message.body == "hi"
                    nursery.cancel_scope.cancel()  # the client gives up on the answer


async def test_a_refused_recipient_fails_on_create_or_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with serve_twilio() as twilio, api(twilio) as client:
            twilio.refuse_recipient(USER, 21610)  # a 400 on create, as Twilio answers it
            twilio.refuse_recipient(OTHER, 63024)  # accepted, then failed
            refused = await client.post("/Messages.json", data=send_form(twilio))
            accepted = await client.post("/Messages.json", data=send_form(twilio, OTHER))
            await trio.sleep(1)  # the stand-in's delays pass on the autojump clock
            [failed] = twilio.received(OTHER)
            twilio.accept_recipient(USER)
            again = await client.post("/Messages.json", data=send_form(twilio))
            with pytest.raises(ValueError, match="not a recipient error"):
                twilio.refuse_recipient(USER, 63016)
    assert refused.status_code == 400
    assert refused.json()["code"] == 21610
    assert refused.json()["message"] == "Attempt to send to unsubscribed recipient"
    assert twilio.received(USER)[0].sid == again.json()["sid"]  # nothing made by the 400
    assert accepted.status_code == 201
    assert (failed.status, failed.error_code, failed.error_message) == (
        "failed",
        63024,
        "Invalid message recipient",
    )
