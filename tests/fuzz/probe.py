"""Sending one request to the live app and checking what the fuzz suite promises of it.

For every request, whatever it holds:

* an answer within `TIMEOUT` seconds (a timeout is `NoAnswer`; a connection closed without
  a response is `Disconnected`),
* never a 5xx (`ServerError`, with what the server logged meanwhile),
* a rejected request (4xx) records nothing (`RecordedForRejected`): no event in the log
  since the request was sent may be one the request would have produced (its derived event
  ids), nor land in a stream that no accepted request has touched.

Each check raises its own exception type, so Hypothesis reports each kind of failure as a
distinct bug with its own minimal example. Every request is counted in `TALLY` by route and
outcome; the suite prints the table at the end (``tests/fuzz/conftest.py``).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from uuid import UUID

import attrs
import httpx

from events.store import RecordedEvent
from tests.fuzz.live import LiveAftercall, Server

#: Seconds a request may take, end to end, before it counts as never answered.
TIMEOUT = 3.0
#: One TLS context for every client: building one per client costs more than a request.
_TLS = ssl.create_default_context()


class FuzzFailure(AssertionError):
    """A promise of the suite broken by one request."""


class ServerError(FuzzFailure):
    """A 5xx answer."""


class NoAnswer(FuzzFailure):
    """No answer within `TIMEOUT`."""


class Disconnected(FuzzFailure):
    """The connection closed (or broke) without an answer to a complete request."""


class RecordedForRejected(FuzzFailure):
    """A request answered 4xx left something in the event log."""


class ServerCrashed(FuzzFailure):
    """The server's loop ended: a request brought the whole worker down."""


class Tally:
    """Requests by route and outcome (a status code, ``timeout`` or ``disconnected``)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, route: str, outcome: str) -> None:
        with self._lock:
            self._counts[(route, outcome)] += 1

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def table(self) -> str:
        with self._lock:
            counts = dict(self._counts)
        if not counts:
            return "(no requests)"
        outcomes = sorted({o for _, o in counts}, key=lambda o: (not o.isdigit(), o))
        routes = sorted({r for r, _ in counts})
        width = max(len(r) for r in [*routes, "route"])
        cells = [max(len(o), 5) for o in outcomes]
        header = f"{'route':<{width}}  " + "  ".join(
            f"{o:>{c}}" for o, c in zip(outcomes, cells, strict=True)
        )
        lines = [header + "  total", "-" * (len(header) + 7)]
        for route in routes:
            row = [counts.get((route, o), 0) for o in outcomes]
            lines.append(
                f"{route:<{width}}  "
                + "  ".join(f"{n or '.':>{c}}" for n, c in zip(row, cells, strict=True))
                + f"  {sum(row):>5}"
            )
        column_totals = [sum(counts.get((r, o), 0) for r in routes) for o in outcomes]
        lines.append("-" * (len(header) + 7))
        lines.append(
            f"{'total':<{width}}  "
            + "  ".join(f"{n:>{c}}" for n, c in zip(column_totals, cells, strict=True))
            + f"  {sum(column_totals):>5}"
        )
        return "\n".join(lines)


TALLY = Tally()


@attrs.frozen
class Outcome:
    route: str
    status: int | None
    body: bytes
    seconds: float
    problem: str | None = None  # why there is no status

    @property
    def label(self) -> str:
        if self.status is not None:
            return str(self.status)
        return "timeout" if self.problem == "timeout" else "closed"


def new_client(base_url: str) -> httpx.Client:
    """A client of its own (so its own connections), with the suite's timeout everywhere
    and no retries: a connection the server dropped must show, not be papered over."""
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(TIMEOUT),
        transport=httpx.HTTPTransport(
            verify=_TLS,
            retries=0,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        ),
    )


def _stream_phone(stream: str) -> str | None:
    category, _, phone = stream.partition("-")
    return phone if category in ("phone", "delivery") and phone else None


@attrs.define
class Prober:
    """Sends requests to the live app and checks each answer against the log."""

    server: Server
    tally: Tally = TALLY
    #: Phones whose streams accepted requests have touched: actors and Twilio's status
    #: callbacks keep appending there in the background.
    active_phones: set[str] = attrs.Factory(set)
    #: Event ids a rejected request would have produced, and those of accepted ones.
    rejected_ids: dict[UUID, str] = attrs.Factory(dict)
    accepted_ids: set[UUID] = attrs.Factory(set)

    def __repr__(self) -> str:  # Hypothesis prints the fixture with each failing example
        return "Prober()"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    @property
    def live(self) -> LiveAftercall:
        """The running app (started again if an earlier example brought it down)."""
        return self.server.live

    def client(self) -> httpx.Client:
        return new_client(self.live.url)

    def ensure_alive(self, what: str) -> None:
        """Raise `ServerCrashed` if the server's loop ended (after ``what``)."""
        live = self.live
        if live.alive():
            try:
                with new_client(live.url) as http:
                    if http.get("/healthz").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            live.join(10)
        if not live.alive():
            raise ServerCrashed(f"{what}: the server died:\n{live.failure_text()}")
        raise NoAnswer(f"{what}: GET /healthz on a new connection failed afterwards")

    # -- the log ----------------------------------------------------------------------------
    def head(self) -> int:
        store = self.live.store
        assert store is not None
        return self.live.call(store.head)

    def events_after(self, position: int) -> list[RecordedEvent]:
        store = self.live.store
        assert store is not None
        found: list[RecordedEvent] = []
        while True:
            page = self.live.call(store.read_all, position, 1000)
            if not page:
                return found
            found.extend(page)
            position = page[-1].position

    # -- requests ---------------------------------------------------------------------------
    def request(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        *,
        route: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        event_ids: Iterable[UUID] = (),
        describe: str = "",
    ) -> Outcome:
        """Send one request and check it (raising a `FuzzFailure` subclass)."""
        before = self.head()
        mark = self.live.log.mark()
        started = time.monotonic()
        body = content if isinstance(content, bytes | None) else _Deadline(content, started)
        try:
            response = client.request(method, url, headers=headers, content=body)
        except httpx.LocalProtocolError:
            raise  # the request itself is not HTTP httpx will send: a bug of the suite
        except httpx.TimeoutException:
            outcome = Outcome(route, None, b"", time.monotonic() - started, "timeout")
        except (httpx.TransportError, _TooSlow) as exc:
            text = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, _TooSlow):
                text = "timeout"
            outcome = Outcome(route, None, b"", time.monotonic() - started, text)
        else:
            outcome = Outcome(
                route, response.status_code, response.content, time.monotonic() - started
            )
        self.tally.add(route, outcome.label)
        what = f"{method} {url} {describe}".strip()
        if outcome.status is None:
            self.ensure_alive(what)
        self.check(outcome, before, mark, list(event_ids), what)
        return outcome

    def check(
        self, outcome: Outcome, before: int, mark: int, event_ids: list[UUID], what: str
    ) -> None:
        def server_log() -> str:
            entries = self.live.log.since(mark)
            if not entries:
                return "the server logged nothing at WARNING or above"
            return "server log:\n" + "\n".join(e.render() for e in entries)

        if outcome.problem == "timeout":
            raise NoAnswer(
                f"{what}: no answer within {TIMEOUT:.0f} s ({outcome.seconds:.1f} s)\n"
                + server_log()
            )
        if outcome.status is None:
            raise Disconnected(f"{what}: no answer: {outcome.problem}\n{server_log()}")
        if outcome.status >= 500:
            raise ServerError(
                f"{what}: answered {outcome.status}: {outcome.body[:300]!r}\n{server_log()}"
            )
        events = self.events_after(before)
        if 400 <= outcome.status < 500:
            for event_id in event_ids:
                self.rejected_ids.setdefault(event_id, what)
            wrong = [
                e
                for e in events
                if e.event_id in event_ids or _stream_phone(e.stream) not in self.active_phones
            ]
            if wrong:
                listed = "\n".join(
                    f"  {e.position} {e.stream} {e.type} {dict(e.data)}"[:400] for e in wrong
                )
                raise RecordedForRejected(
                    f"{what}: answered {outcome.status} ({outcome.body[:200]!r}) yet the log "
                    f"grew:\n{listed}"
                )
        elif outcome.status < 300:
            self.accepted_ids.update(event_ids)
            for event in events:
                phone = _stream_phone(event.stream)
                if phone is not None:
                    self.active_phones.add(phone)


class _TooSlow(Exception):
    """A streamed (chunked) request body could not be sent within the timeout."""


class _Deadline:
    """Wraps a chunked body so that sending it counts against the request's timeout too
    (httpx's write timeout is per write, and a server that stops reading would block a
    generator body forever)."""

    def __init__(self, chunks: Iterable[bytes], started: float) -> None:
        self._chunks = chunks
        self._started = started

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if time.monotonic() - self._started > TIMEOUT:
                raise _TooSlow("the server stopped taking the body")
            yield chunk


# -- raw sockets, for what httpx will not send ---------------------------------------------------


@attrs.frozen
class RawAnswer:
    """The first response on a raw connection: its status, or why there is none."""

    status: int | None
    closed: bool
    timed_out: bool
    head: bytes

    @property
    def label(self) -> str:
        if self.status is not None:
            return str(self.status)
        return "timeout" if self.timed_out else "closed"


def raw_exchange(port: int, payload: bytes, timeout: float = TIMEOUT) -> RawAnswer:
    """Send ``payload`` on a fresh connection; read until a status line, EOF or timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may close early on garbage; what it answered still counts.
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        while b"\r\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                return RawAnswer(None, False, True, data)
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                return RawAnswer(None, False, True, data)
            except OSError:
                return RawAnswer(None, True, False, data)
            if not chunk:
                return RawAnswer(None, True, False, data)
            data += chunk
    line = data.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return RawAnswer(status, False, False, data[:200])


def raw_sequence(port: int, requests: list[bytes], timeout: float = TIMEOUT) -> list[RawAnswer]:
    """Send ``requests`` one after the other on one connection, each once the answer to the
    one before has been read in full; stops at the first that gets no answer."""
    answers: list[RawAnswer] = []
    buffer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for payload in requests:
            deadline = time.monotonic() + timeout
            with contextlib.suppress(OSError):
                sock.sendall(payload)
            answer, buffer = _read_response(sock, buffer, deadline)
            answers.append(answer)
            if answer.status is None or b"connection: close" in answer.head.lower():
                break
    return answers


def _read_response(sock: socket.socket, buffer: bytes, deadline: float) -> tuple[RawAnswer, bytes]:
    """One whole response (its head, then ``Content-Length`` bytes of body)."""
    needed: int | None = None
    head = b""
    while True:
        if needed is None and b"\r\n\r\n" in buffer:
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            needed = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    needed = int(value.strip())
        if needed is not None and len(buffer) >= needed:
            parts = head.split(b" ")
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            return RawAnswer(status, False, False, head), buffer[needed:]
        left = deadline - time.monotonic()
        if left <= 0:
            return RawAnswer(None, False, True, head or buffer[:200]), b""
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return RawAnswer(None, False, True, head or buffer[:200]), b""
        except OSError:
            return RawAnswer(None, True, False, head or buffer[:200]), b""
        if not chunk:
            return RawAnswer(None, True, False, head or buffer[:200]), b""
        buffer += chunk
