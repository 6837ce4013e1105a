"""The operators' API refuses what it cannot use with a 4xx and a reason, never a 5xx, and
records nothing when it refuses (ARCHITECTURE.md, invariant 4).

The real app on a real socket; one conversation with an open window is there, so every
request below would be carried out if its bad part were right. Random bodies come from a
seeded generator: the same cases every run.
"""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest

from events.store import EventStore
from tests.e2e.harness import Aftercall, of_type, running_aftercall

ANA = "+15551230001"
TOKEN = "token-for-the-control-api"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = ("handoff", "messages", "resume")

HOSTILE_PHONES = (
    "%2B",
    "%00",
    "%FF%FE",
    "..%2F..%2Fetc",
    "%2B999999999999999999999",
    "%2B1555" + "1" * 5000,
    "abc",
    "%E2%80%AE%2B15551230001",
)
HOSTILE_BODIES: tuple[bytes, ...] = (
    b"not json",
    b"[1, 2]",
    b'"text"',
    b"null",
    b'{"text": 5}',
    b'{"text": ""}',
    b'{"text": "   "}',
    b'{"text": "a\\u0000b"}',
    b'{"text": "\\ud800"}',
    b'{"text": NaN}',
    b'{"text": Infinity}',
    b'{"text": "hi", "operator": ["x"]}',
    b'{"text": "hi", "operator": "\\udfff"}',
    b'{"reason": {"a": 1}, "text": "hi"}',
    b"\xff\xfe",
    b"{" * 5,
    b"[" * 100_000,
    json.dumps({"text": "x" * 6401}).encode(),
    json.dumps({"text": "hi", "operator": "o" * 101}).encode(),
    json.dumps({"text": "hi", "reason": "r" * 501}).encode(),
    json.dumps({"text": "hi", "k\u0000": 1}).encode(),
)


async def _started(ac: Aftercall) -> None:
    await ac.complete_call(ANA, "conv_control_api")
    await ac.wait_for(of_type("ReplySent", ANA))
    await ac.twilio.user_says(ANA, "hello")  # the window is open: a good message would go
    await ac.wait_for(of_type("ReplySent", ANA), count=2)


def _random_bodies(seed: int = 19, count: int = 60) -> list[bytes]:
    """JSON objects with the right keys holding wrong values, and wrong keys."""
    rng = random.Random(seed)
    values: list[Any] = [None, 0, -1, 2**70, 1.5, True, [], {}, [""], {"x": "y"}, "", " \t\n"]
    values += ["\u202e", "\x00", "a" * 7000, "ok"]
    bodies = []
    for _ in range(count):
        body: dict[str, Any] = {}
        for key in rng.sample(["text", "operator", "reason", "extra"], rng.randint(1, 3)):
            body[key] = rng.choice(values)
        if isinstance(body.get("text"), str) and body["text"] == "ok" and "operator" not in body:
            body["operator"] = 7  # keep every case a bad one
        bodies.append(json.dumps(body).encode())
    return bodies


def _is_good(body: bytes, route: str) -> bool:
    """A body the route would accept (the random generator makes a few)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False

    def fine(name: str, most: int, required: bool = False) -> bool:
        value = data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return not required
        return isinstance(value, str) and len(value.strip()) <= most and "\x00" not in value

    known = {"messages": {"text", "operator"}}.get(route, {"reason", "operator"})
    if set(data) - known or not (fine("operator", 100) and fine("reason", 500)):
        return False
    return route != "messages" or fine("text", 6400, required=True)


async def test_hostile_requests_are_refused_with_a_reason_and_record_nothing(
    store: EventStore,
) -> None:
    async with running_aftercall(store, env={"AFTERCALL_ADMIN_TOKEN": TOKEN}) as ac:
        await _started(ac)
        head = await store.head()
        answers: list[tuple[str, int, Any]] = []
        async with httpx.AsyncClient(base_url=ac.url, headers=AUTH, timeout=10) as http:
            for route in ROUTES:
                for phone in HOSTILE_PHONES:
                    response = await http.post(f"/api/conversations/{phone}/{route}", json={})
                    answers.append((f"{route} {phone[:30]}", response.status_code, response))
                for body in HOSTILE_BODIES + tuple(_random_bodies()):
                    if _is_good(body, route):
                        continue
                    response = await http.post(
                        f"/api/conversations/{ANA}/{route}",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                    answers.append((f"{route} {body[:60]!r}", response.status_code, response))
            for key in ("", "x" * 201, "a\tb", "k\x7fey"):
                response = await http.post(
                    f"/api/conversations/{ANA}/messages",
                    json={"text": "hi"},
                    headers={"Idempotency-Key": key},
                )
                answers.append((f"Idempotency-Key {key[:20]!r}", response.status_code, response))
            too_large = await http.post(
                f"/api/conversations/{ANA}/messages", content=b"{" + b" " * 70_000 + b"}"
            )
            answers.append(("70 KB body", too_large.status_code, too_large))
        unauthorised = httpx.AsyncClient(base_url=ac.url, timeout=10)
        async with unauthorised as http:
            for route in ROUTES:
                response = await http.post(f"/api/conversations/{ANA}/{route}", json={"text": "x"})
                answers.append((f"no token {route}", response.status_code, response))
        recorded = await store.read_all(after=head, limit=100)

    server_errors = [(what, status) for what, status, _ in answers if status >= 500]
    assert server_errors == []
    accepted = [(what, status) for what, status, _ in answers if status < 400]
    assert accepted == [], accepted
    for what, _, response in answers:
        assert response.json()["error"], what
    assert [(e.stream, e.type, e.data) for e in recorded if e.type != "DeliveryStatusChanged"] == []


async def test_the_admin_api_is_off_without_a_token(store: EventStore) -> None:
    async with (
        running_aftercall(store) as ac,
        httpx.AsyncClient(base_url=ac.url, headers=AUTH) as http,
    ):
        answers = [
            await http.post(f"/api/conversations/{ANA}/{route}", json={}) for route in ROUTES
        ]
        optouts = await http.get("/api/optouts")
    assert [a.status_code for a in [*answers, optouts]] == [403] * 4


@pytest.mark.parametrize("value", ["maybe", "2", ""])
async def test_list_flags_are_checked(store: EventStore, value: str) -> None:
    async with (
        running_aftercall(store, env={"AFTERCALL_ADMIN_TOKEN": TOKEN}) as ac,
        httpx.AsyncClient(base_url=ac.url, headers=AUTH) as http,
    ):
        optouts = await http.get("/api/optouts", params={"all": value})
        waiting = await http.get("/api/conversations", params={"waiting": value})
    expected = 200 if value == "" else 400
    assert (optouts.status_code, waiting.status_code) == (expected, expected)
