"""The WhatsApp sender: Twilio's Messages API over httpx.

The phone actor owns the decisions (what to say, template or text, when to reconcile an
outbox intent); this module owns the wire: one create call per part, form-encoded with
Basic auth, a ``StatusCallback`` on every message, and retries that do not duplicate.

Retries, and why they cannot send twice:
- 429, 5xx and transport errors are retried with exponential backoff and full jitter;
  Twilio's ``Retry-After`` is a floor. Any other 4xx is final (`TwilioRejected`): it would
  fail the same way again.
- A retry after an outcome that may have created the message (a 5xx, a connection dropped
  after the request went out, a timeout waiting for the answer, an unreadable 2xx) first
  looks the message up (`find_sent` over the last moments) and returns it if Twilio has it.
  A 429 and a refused connection are known not to have created anything and are retried
  directly.
- When the budget runs out, `TwilioUnavailable.maybe_sent` tells the caller whether it must
  reconcile (look up) before trying again later.

Nothing empty is ever sent (invariant 3): an empty or whitespace-only body, or an empty
template variable, raises `EmptyMessage` before any request. The auth token never appears
in a repr, an error or a log line (invariant 5).
"""

from __future__ import annotations

import json
import logging
import random as random_module
import re
from base64 import b64encode
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

import attrs
import httpx
import trio

from actors.retry import backoff_delay, is_retryable_status, parse_retry_after
from clients.http1 import Http1Transport, Target
from clients.twilio.content import (
    check_body,
    check_content_sid,
    content_variables_json,
)
from clients.twilio.resources import (
    MalformedResponse,
    SentMessage,
    date_sent_filter,
    message_matches,
    parse_error,
    parse_message,
)
from events.phones import normalise_phone, whatsapp_address

__all__ = [
    "DEFAULT_API_BASE_URL",
    "SenderStatistics",
    "TwilioConfig",
    "TwilioError",
    "TwilioRejected",
    "TwilioUnavailable",
    "WhatsAppSender",
]

logger = logging.getLogger(__name__)

DEFAULT_API_BASE_URL: Final = "https://api.twilio.com"
API_VERSION: Final = "2010-04-01"
#: Twilio's largest page; few requests even for a busy phone.
PAGE_SIZE: Final = 1000
#: A search that needs more pages than this is not a reconciliation, it is a bug.
MAX_PAGES: Final = 20
#: How many SIDs this sender remembers having created (to skip them when reconciling).
REMEMBERED_SIDS: Final = 4096
_SID = re.compile(r"^[A-Z]{2}[0-9a-fA-F]{32}$")
_ACCOUNT_SID = re.compile(r"^[A-Za-z0-9]+$")
_HEADERS: Final = [(b"accept", b"application/json"), (b"user-agent", b"aftercall")]
_FORM: Final = (b"content-type", b"application/x-www-form-urlencoded")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Configuration and values


def _non_empty(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"TwilioConfig.{attribute.name} must not be empty")


def _account_sid(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    _non_empty(instance, attribute, value)
    if not _ACCOUNT_SID.match(value):
        raise ValueError("TwilioConfig.account_sid must be letters and digits (AC...)")


def _without_trailing_slash(url: str) -> str:
    return url.rstrip("/")


def _http_url(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not re.match(r"^https?://[^\s/_]+(/\S*)?$", value):
        raise ValueError(
            f"TwilioConfig.{attribute.name} must be an http(s) URL whose host has no "
            f"underscore (Twilio refuses those), got {value!r}"
        )


_positive = attrs.validators.gt(0.0)


@attrs.frozen(kw_only=True)
class TwilioConfig:
    """Where and as whom to send, and how hard to try.

    ``whatsapp_from`` accepts ``+14155238886`` or ``whatsapp:+14155238886`` and is kept in
    the ``whatsapp:`` form Twilio wants. The retry budget is ``max_attempts`` requests per
    call, sleeping up to ``backoff_initial * 2**n`` (capped at ``backoff_max``) between them;
    a ``Retry-After`` longer than ``backoff_max`` ends the call at once (the caller is
    better placed to wait that long than an actor blocked in a send).
    ``reconcile_skew`` widens the look-back of the in-call duplicate check, for the
    difference between our clock and Twilio's.
    """

    account_sid: str = attrs.field(validator=_account_sid)
    auth_token: str = attrs.field(repr=False, validator=_non_empty)
    whatsapp_from: str = attrs.field(converter=whatsapp_address)
    status_callback_url: str | None = attrs.field(default=None, validator=_http_url)
    api_base_url: str = attrs.field(
        default=DEFAULT_API_BASE_URL,
        converter=_without_trailing_slash,
        validator=_http_url,
    )
    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    backoff_initial: float = attrs.field(default=0.5, validator=_positive)
    backoff_max: float = attrs.field(default=30.0, validator=_positive)
    request_timeout: float = attrs.field(default=15.0, validator=_positive)
    reconcile_skew: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    #: Requests in flight at once. Twilio caps an account's concurrent requests, and
    #: httpcore's pool scans every connection for every request, so a few busy
    #: connections cost far less CPU than one per waiting actor (benchmarks/conversation.py).
    max_concurrent_requests: int = attrs.field(default=8, validator=attrs.validators.ge(1))

    @property
    def messages_url(self) -> str:
        return f"{self.api_base_url}/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

    def message_url(self, sid: str) -> str:
        return f"{self.api_base_url}/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"


@attrs.frozen
class SenderStatistics:
    """Counters since the sender was made, for metrics and the admin view.

    ``requests`` counts HTTP requests (retries and look-ups included); ``retries`` the
    backoff sleeps; ``rejected`` the final 4xx; ``unavailable`` the calls that ran out of
    budget; ``reconciled`` the retries that found their message already created.
    """

    requests: int
    retries: int
    rejected: int
    unavailable: int
    sent: int
    reconciled: int
    last_error_code: int | None


class TwilioError(Exception):
    """Twilio did not do what was asked. ``code`` is Twilio's (21211, 63016...) if known."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        more_info: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.more_info = more_info


class TwilioRejected(TwilioError):
    """A 4xx other than 429: the request is wrong (bad number, bad credentials, too long).

    Not retried; record it. The same request would fail the same way.
    """

    retryable = False


class TwilioUnavailable(TwilioError):
    """429, 5xx or the network, still failing after the retry budget.

    Worth trying again later: ``retry_after`` is Twilio's hint in seconds, if it gave one.
    ``maybe_sent`` is True when an attempt may have created the message, so the caller must
    look it up (`WhatsAppSender.find_sent`) before sending again.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
        maybe_sent: bool = False,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent
        self.attempts = attempts


class _Retry(Exception):
    """An attempt failed in a way worth retrying (internal to the retry loop).

    ``ambiguous``: the attempt may have done its work anyway (a create whose answer was
    lost), so the next attempt looks before it acts.
    """

    def __init__(
        self,
        reason: str,
        *,
        ambiguous: bool,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ambiguous = ambiguous
        self.status = status
        self.code = code
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------
# The sender


class WhatsAppSender:
    """Send WhatsApp messages through Twilio, look them up, and count what happened.

    One sender is shared by every phone actor of a process; it holds no per-phone state
    beyond the SIDs it created recently. The ``transport`` belongs to the caller (its
    lifetime is the composition root's), and ``random`` makes the jitter reproducible.

    Requests go to the transport as bytes (`Http1Transport.request`), not through an
    ``httpx.AsyncClient`` and not as httpx models: the client's layers (URL and header
    merging, the auth flow, redirects, a cookie jar fed from every response) and the
    models' parsing cost more CPU per message than the HTTP exchange itself, and the
    sender needs none of them: one fixed Authorization header, one URL parsed once, no
    redirects, no cookies.
    """

    def __init__(
        self,
        transport: Http1Transport,
        config: TwilioConfig,
        *,
        random: random_module.Random | None = None,
    ) -> None:
        self._transport = transport
        self._config = config
        self._random = random if random is not None else random_module.Random()
        credentials = f"{config.account_sid}:{config.auth_token}".encode()
        self._headers = [*_HEADERS, (b"authorization", b"Basic " + b64encode(credentials))]
        self._messages = Target.of(config.messages_url)
        self._in_flight = trio.CapacityLimiter(config.max_concurrent_requests)
        self._own_order: deque[str] = deque()
        self._own: set[str] = set()
        self._requests = 0
        self._retries = 0
        self._rejected = 0
        self._unavailable = 0
        self._sent = 0
        self._reconciled = 0
        self._last_error_code: int | None = None

    def __repr__(self) -> str:
        return f"<WhatsAppSender {self._config.account_sid} from {self._config.whatsapp_from}>"

    @property
    def config(self) -> TwilioConfig:
        return self._config

    def statistics(self) -> SenderStatistics:
        return SenderStatistics(
            requests=self._requests,
            retries=self._retries,
            rejected=self._rejected,
            unavailable=self._unavailable,
            sent=self._sent,
            reconciled=self._reconciled,
            last_error_code=self._last_error_code,
        )

    # ----------------------------------------------------------------- public operations

    async def send_text(self, to_phone: str, body: str) -> SentMessage:
        """Send one free-form text (at most 1600 characters: split with `split_message`).

        Raises:
            EmptyMessage: ``body`` is empty or whitespace only (nothing is sent).
            MessageTooLong: ``body`` is over the limit (nothing is sent).
            InvalidPhone: ``to_phone`` is not a phone number (nothing is sent).
            TwilioRejected: Twilio refused it (``code`` says why: 21211, 21617, 20003...).
            TwilioUnavailable: still 429/5xx/network after the retry budget.
        """
        check_body(body)
        phone = normalise_phone(to_phone)
        form = self._form(phone, Body=body)
        return await self._create(form, phone=phone, body=body, content_sid=None)

    async def send_template(
        self, to_phone: str, content_sid: str, variables: Mapping[str, str]
    ) -> SentMessage:
        """Send an approved template (``ContentSid`` + ``ContentVariables``, no ``Body``).

        The only thing that reaches a person outside the 24-hour window.

        Raises:
            EmptyMessage: a variable is empty or whitespace only (nothing is sent).
            ValueError: ``content_sid`` is not ``HX`` + 32 hex, or too many variables.
            InvalidPhone, TwilioRejected, TwilioUnavailable: as for `send_text`.
        """
        check_content_sid(content_sid)
        fields = {"ContentSid": content_sid}
        if variables:
            fields["ContentVariables"] = content_variables_json(variables)
        phone = normalise_phone(to_phone)
        form = self._form(phone, **fields)
        return await self._create(form, phone=phone, body=None, content_sid=content_sid)

    async def fetch(self, sid: str) -> SentMessage:
        """One message as Twilio has it now (status, error code...).

        Raises:
            ValueError: ``sid`` is not a Twilio message SID.
            TwilioRejected: 404 (code 20404) or another 4xx.
            TwilioUnavailable: still 429/5xx/network after the retry budget.
        """
        if not _SID.match(sid):
            raise ValueError(f"{sid!r} is not a Twilio message SID")
        target = Target.of(self._config.message_url(sid))

        async def once(_: bool) -> SentMessage:
            payload = await self._request_json("fetch message", b"GET", target)
            return self._parse(payload, ambiguous=False)

        return await self._retrying(f"fetch {sid}", once)

    async def find_sent(
        self,
        to_phone: str,
        since: datetime,
        *,
        body: str | None = None,
        content_sid: str | None = None,
    ) -> list[SentMessage]:
        """The messages we sent to ``to_phone`` at or after ``since``, oldest first (to the
        second: Twilio's dates have whole seconds, ties are ordered by SID).

        For the outbox: an intent recorded without an outcome is looked up here before it
        is sent again. Pass the intent's recorded time minus a margin for the difference
        between our clock and Twilio's, and skip SIDs the log already holds. What counts as
        a match is `clients.twilio.resources.message_matches` (to, from our sender, outbound,
        created at or after ``since``, and the same body or template when given).

        Lists ``GET Messages.json?To=…&From=…&DateSent>=YYYY-MM-DD`` through every page,
        plus the first page without the date filter: a message still queued has no
        ``date_sent`` yet and escapes the filter.

        Raises:
            ValueError: ``since`` is naive.
            InvalidPhone, TwilioRejected, TwilioUnavailable: as for `send_text`.
        """
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        phone = normalise_phone(to_phone)

        async def once(_: bool) -> list[SentMessage]:
            return await self._search(phone, since, body=body, content_sid=content_sid)

        return await self._retrying(f"find messages sent to {phone}", once)

    # ----------------------------------------------------------------- create

    def _form(self, phone: str, **fields: str) -> dict[str, str]:
        form = {"To": whatsapp_address(phone), "From": self._config.whatsapp_from, **fields}
        if self._config.status_callback_url is not None:
            form["StatusCallback"] = self._config.status_callback_url
        return form

    async def _create(
        self, form: dict[str, str], *, phone: str, body: str | None, content_sid: str | None
    ) -> SentMessage:
        started = datetime.now(UTC)

        async def once(unsure: bool) -> SentMessage:
            if unsure:
                found = await self._created_meanwhile(phone, started, body, content_sid)
                if found is not None:
                    return found
            payload = await self._request_json("send message", b"POST", self._messages, data=form)
            return self._parse(payload, ambiguous=True)

        message = await self._retrying(f"send to {phone}", once)
        self._remember(message.sid)
        self._sent += 1
        return message

    async def _created_meanwhile(
        self, phone: str, started: datetime, body: str | None, content_sid: str | None
    ) -> SentMessage | None:
        """The message an earlier attempt of this call created, if Twilio has it."""
        since = started - timedelta(seconds=self._config.reconcile_skew)
        candidates = [
            message
            for message in await self._search(phone, since, body=body, content_sid=content_sid)
            if message.sid not in self._own
        ]
        if not candidates:
            return None
        self._reconciled += 1
        message = candidates[-1]
        logger.info("Twilio already had message %s to %s: not sending it again", message.sid, phone)
        return message

    def _remember(self, sid: str) -> None:
        if sid in self._own:
            return
        self._own.add(sid)
        self._own_order.append(sid)
        if len(self._own_order) > REMEMBERED_SIDS:
            self._own.discard(self._own_order.popleft())

    # ----------------------------------------------------------------- search

    async def _search(
        self, phone: str, since: datetime, *, body: str | None, content_sid: str | None
    ) -> list[SentMessage]:
        """One pass over the listing (no retries of its own: the caller's loop retries)."""
        base = {"To": whatsapp_address(phone), "From": self._config.whatsapp_from}
        dated = {**base, "DateSent>": date_sent_filter(since), "PageSize": str(PAGE_SIZE)}
        payloads = await self._list_pages(dated, max_pages=MAX_PAGES)
        payloads += await self._list_pages({**base, "PageSize": "50"}, max_pages=1)
        found: dict[str, SentMessage] = {}
        for payload in payloads:
            if not isinstance(payload, Mapping):
                raise _Retry("Twilio listed something that is not a message", ambiguous=False)
            if message_matches(
                payload,
                to_phone=phone,
                from_address=self._config.whatsapp_from,
                since=since,
                body=body,
                content_sid=content_sid,
            ):
                message = self._parse(payload, ambiguous=False)
                found.setdefault(message.sid, message)
        earliest = datetime.min.replace(tzinfo=UTC)
        return sorted(found.values(), key=lambda m: (m.date_created or earliest, m.sid))

    async def _list_pages(self, params: dict[str, str], *, max_pages: int) -> list[Any]:
        url: str | None = self._config.messages_url
        query: dict[str, str] | None = params
        messages: list[Any] = []
        seen_urls: set[str] = set()
        for _ in range(max_pages):
            if url is None:
                return messages
            target = Target.of(url)
            if query is not None:
                target = target.with_query(urlencode(query).encode("ascii"))
            page = await self._request_json("list messages", b"GET", target)
            if not isinstance(page, Mapping) or not isinstance(page.get("messages"), list):
                raise _Retry("Twilio answered a listing without messages", ambiguous=False)
            messages.extend(page["messages"])
            url = self._next_page_url(page.get("next_page_uri"))
            query = None
            if url is not None and url in seen_urls:
                raise TwilioError("Twilio's listing pages loop; refusing to follow them")
            if url is not None:
                seen_urls.add(url)
        if url is not None and max_pages > 1:
            raise TwilioError(
                f"more than {max_pages * PAGE_SIZE} messages to one phone since that day: "
                "refusing to guess whether one of them is the message being reconciled"
            )
        return messages

    def _next_page_url(self, uri: Any) -> str | None:
        """Follow ``next_page_uri`` only on Twilio's own host: the credentials go with it."""
        if uri is None or uri == "":
            return None
        if not isinstance(uri, str):
            raise _Retry("Twilio answered an unreadable next_page_uri", ambiguous=False)
        if uri.startswith("/"):
            return self._config.api_base_url + uri
        if uri.startswith(self._config.api_base_url + "/"):
            return uri
        raise TwilioError("Twilio's next_page_uri points to another host; not following it")

    # ----------------------------------------------------------------- HTTP

    async def _retrying(self, operation: str, once: Callable[[bool], Awaitable[T]]) -> T:
        """Run ``once`` until it succeeds, fails for good, or the budget is spent.

        ``once`` is told whether an earlier attempt may have done the work (so a create
        looks before it leaps).
        """
        config = self._config
        unsure = False
        attempt = 0
        while True:
            attempt += 1
            try:
                return await once(unsure)
            except _Retry as failure:
                unsure = unsure or failure.ambiguous
                too_long = (
                    failure.retry_after is not None and failure.retry_after > config.backoff_max
                )
                if attempt >= config.max_attempts or too_long:
                    self._unavailable += 1
                    raise TwilioUnavailable(
                        self._redact(
                            f"{operation}: Twilio unavailable after {attempt} attempt(s): "
                            f"{failure.reason}"
                            + (
                                f" (Retry-After {failure.retry_after:g}s is beyond the "
                                f"{config.backoff_max:g}s this call may wait)"
                                if too_long
                                else ""
                            )
                        ),
                        status=failure.status,
                        code=failure.code,
                        retry_after=failure.retry_after,
                        maybe_sent=unsure,
                        attempts=attempt,
                    ) from None
                delay = backoff_delay(
                    attempt,
                    initial=config.backoff_initial,
                    maximum=config.backoff_max,
                    jitter=1.0,  # full jitter: actors hit by one 429 spread out
                    rng=self._random,
                    retry_after=failure.retry_after,
                )
                self._retries += 1
                logger.warning(
                    "%s: %s; attempt %d of %d, retrying in %.2fs",
                    operation,
                    self._redact(failure.reason),
                    attempt,
                    config.max_attempts,
                    delay,
                )
                await trio.sleep(delay)

    async def _request_json(
        self,
        operation: str,
        method: bytes,
        target: Target,
        *,
        data: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON of a 2xx, else `_Retry` or `TwilioRejected`."""
        # A POST whose answer never came may have been processed; a refused connection
        # and an unsent request were not.
        may_have_acted = method != b"GET"
        self._requests += 1
        headers = self._headers
        body = b""
        if data is not None:
            body = urlencode(data).encode("ascii")
            headers = [*headers, _FORM, (b"content-length", str(len(body)).encode())]
        timeout = self._config.request_timeout
        try:
            async with self._in_flight:
                answer = await self._transport.request(
                    method, target, headers, body, answer_within=timeout, connect_within=timeout
                )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _Retry(f"cannot connect ({_describe(exc)})", ambiguous=False) from exc
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError) as exc:
            raise TwilioError(self._redact(f"{operation}: {_describe(exc)}")) from exc
        except httpx.TransportError as exc:
            raise _Retry(f"no answer ({_describe(exc)})", ambiguous=may_have_acted) from exc

        status = answer.status
        if 200 <= status < 300:
            try:
                return json.loads(answer.body)
            except ValueError:
                raise _Retry(
                    f"HTTP {status} with a body that is not JSON", ambiguous=may_have_acted
                ) from None
        info = parse_error(status, answer.body.decode("utf-8", "replace"))
        self._last_error_code = info.code if info.code is not None else self._last_error_code
        summary = f"HTTP {status}" + (f", error {info.code}" if info.code is not None else "")
        if is_retryable_status(status):
            retry_after = answer.header(b"retry-after")
            raise _Retry(
                f"{summary}: {info.message}",
                # Twilio documents 429s as not processed; a 5xx may have been half done.
                ambiguous=may_have_acted and status != 429,
                status=status,
                code=info.code,
                retry_after=parse_retry_after(
                    None if retry_after is None else retry_after.decode("latin-1"),
                    datetime.now(UTC),
                ),
            )
        self._rejected += 1
        raise TwilioRejected(
            self._redact(f"{operation}: Twilio refused it ({summary}): {info.message}"),
            status=status,
            code=info.code,
            more_info=info.more_info,
        )

    def _parse(self, payload: Any, *, ambiguous: bool) -> SentMessage:
        try:
            return parse_message(payload)
        except MalformedResponse as exc:
            raise _Retry(f"unreadable message from Twilio: {exc}", ambiguous=ambiguous) from exc

    def _redact(self, text: str) -> str:
        """Belt and braces: an answer that echoes the token must not carry it further."""
        return text.replace(self._config.auth_token, "[redacted]")


def _describe(exc: Exception) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
