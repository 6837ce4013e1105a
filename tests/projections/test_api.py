"""The read side end to end: the real app follows the log; the JSON API answers from it."""

from __future__ import annotations

import httpx
import trio

from events.store import EventStore
from projections.runner import ALL_PROJECTIONS
from tests.e2e.harness import of_type, running_aftercall

ANA = "+15551230001"
TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_conversation_history_and_metrics_over_http(store: EventStore) -> None:
    async with (
        running_aftercall(store, env={"AFTERCALL_ADMIN_TOKEN": TOKEN}) as ac,
        httpx.AsyncClient(base_url=ac.url, timeout=10) as http,
    ):
        await ac.complete_call(ANA)
        await ac.wait_for(of_type("ReplySent", ANA))
        await ac.twilio.user_says(ANA, "Hello! What did we discuss?")
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        # The first message's failure arrives later, in a status callback of its own.
        await ac.wait_for(of_type("DeliveryStatusChanged", ANA, status="failed"))
        runner = ac.system.projections
        assert runner is not None
        with trio.fail_after(10):
            await runner.wait_until(await store.head())

        assert (await http.get("/api/conversations")).status_code == 401
        wrong = await http.get("/api/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "bearer token" in wrong.json()["error"]
        assert TOKEN not in wrong.text

        listing = await http.get("/api/conversations", params={"active": "true"}, headers=AUTH)
        assert listing.status_code == 200
        [conversation] = listing.json()["conversations"]
        assert conversation["phone"] == ANA
        assert conversation["state"] == "waiting"
        assert (conversation["messages_in"], conversation["messages_out"]) == (1, 2)

        one = await http.get("/api/conversations/%2B15551230001", headers=AUTH)
        assert one.status_code == 200
        messages = one.json()["messages"]
        assert [m["direction"] for m in messages] == ["outbound", "inbound", "outbound"]
        assert messages[1]["body"] == "Hello! What did we discuss?"
        assert messages[0]["call_conversation_id"] == "conv_test1"
        # Free text as the first message, outside the 24-hour window (no template set):
        # Twilio accepts it and fails it later, as WhatsApp does.
        assert (messages[0]["status"], messages[0]["error_code"]) == ("failed", 63016)
        assert messages[2]["kind"] == "agent"

        assert (await http.get("/api/conversations/abc", headers=AUTH)).status_code == 400
        missing = await http.get("/api/conversations/+15559999999", headers=AUTH)
        assert missing.status_code == 404
        bad = await http.get("/api/conversations", params={"limit": "x"}, headers=AUTH)
        assert (bad.status_code, bad.json()["error"]) == (
            400,
            "limit must be a whole number from 1 to 1000, not 'x'",
        )
        # A LIMIT past int64 was a database error (a 500).
        huge = await http.get("/api/conversations", params={"limit": "9" * 30}, headers=AUTH)
        assert huge.status_code == 400
        state = await http.get("/api/conversations", params={"state": "gone"}, headers=AUTH)
        assert state.status_code == 400

        metrics = (await http.get("/api/metrics", headers=AUTH)).json()
        assert metrics["funnel"] == {
            "calls": 1,
            "first_message": 1,
            "user_replied": 1,
            "continued": 0,
        }
        assert metrics["twilio_errors"] == {"63016": 1}
        assert metrics["agent_latency_seconds"]["overall"]["count"] == 1
        assert metrics["added_latency_seconds"]["overall"]["count"] == 1
        assert metrics["added_latency_seconds"]["overall"]["p50"] >= 0
        assert {p["name"] for p in metrics["projections"]} == {p.name for p in ALL_PROJECTIONS}


async def test_the_api_is_off_without_a_configured_token(store: EventStore) -> None:
    async with (
        running_aftercall(store) as ac,
        httpx.AsyncClient(base_url=ac.url, timeout=10) as http,
    ):
        response = await http.get("/api/metrics", headers=AUTH)
        assert response.status_code == 403
        assert "AFTERCALL_ADMIN_TOKEN" in response.json()["error"]
