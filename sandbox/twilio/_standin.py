"""The Twilio stand-in: its state, the simulated WhatsApp users, and the requests it makes.

Protocol rules live in ``_protocol`` as plain functions; this module holds the state those
functions read and does the I/O around them: posting inbound messages and status callbacks
to the app, and walking each outbound message through sent → delivered → read on
trio's clock in a task owned by ``serve_twilio``'s nursery.

The webhooks go out through the sandbox's own HTTP client (``sandbox._webhook_client``),
which shares no code with aftercall's: the stand-in plays the outside world, so a bug in
aftercall's HTTP client cannot hide on both ends of an end-to-end test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Literal
from urllib.parse import urlencode

import attrs
import trio

from sandbox._standin_server import serve_standin
from sandbox._webhook_client import (
    WebhookClient,
    WebhookConnectError,
    WebhookTimeout,
    WebhookTransportError,
)
from sandbox.twilio._clock import SandboxClock
from sandbox.twilio._errors import NotServing, NoWebhookUrl
from sandbox.twilio._faults import ASGIApp, Fault, FaultPlan, faulting
from sandbox.twilio._protocol import (
    CreateRequest,
    TwimlError,
    TwimlReply,
    e164,
    inbound_params,
    messages_path,
    new_sid,
    parse_twiml,
    sign,
    status_params,
    whatsapp_address,
    window_open,
)
from sandbox.twilio._server import build_app
from sandbox.twilio._values import (
    RECIPIENT_ERROR_MESSAGES,
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_WHATSAPP_FROM,
    ApiError,
    Delivery,
    DeliveryDelays,
    Media,
    MessageRecord,
    RecipientRefusal,
    StoredMedia,
    Template,
)

#: Twilio's text for 63016 (reference §3.4).
WINDOW_CLOSED_MESSAGE = (
    "Failed to send freeform message because you are outside the allowed window. "
    "If you are using WhatsApp, please use a Message Template."
)
#: Signs ``bad_signature`` deliveries: well-formed, but not from this account's token.
_WRONG_TOKEN = "00000000000000000000000000000000"
#: Seconds to open a connection to the app; a failure is retried once (Twilio's ``ct``).
CONNECT_TIMEOUT = 5.0
#: Idle keep-alive connections older than this are not reused (httpcore's default, and what
#: the stand-in used before): servers drop idle connections after a few seconds.
KEEPALIVE_EXPIRY = 5.0
_FORM = "application/x-www-form-urlencoded"

__all__ = [
    "CONNECT_TIMEOUT",
    "KEEPALIVE_EXPIRY",
    "WINDOW_CLOSED_MESSAGE",
    "NoWebhookUrl",
    "NotServing",
    "TwilioStandIn",
    "WebhookAnswer",
    "serve_twilio",
]


@attrs.frozen
class WebhookAnswer:
    """What the app answered a webhook or status callback: the parts Twilio judges."""

    status: int
    content_type: str | None
    body: bytes


@attrs.define(eq=False)
class TwilioStandIn:
    """A local Twilio account with one WhatsApp sender, and the users who write to it.

    Attributes:
        account_sid, auth_token: The credentials the REST API accepts and signs with.
        whatsapp_from: The account's WhatsApp sender.
        webhook_url: Where simulated users' messages are posted (exactly this URL is signed).
        status_callbacks: Post status callbacks; when off, statuses still advance.
        read_receipts: Take delivered messages on to ``read``.
        delays: Seconds between queued → sent → delivered → read.
        window_failure_status: Final status of free text outside the 24-hour window
            (Twilio has been seen to use both ``failed`` and ``undelivered``).
        webhook_timeout: Twilio's total deadline for a webhook answer.
        webhook_concurrency: Webhooks and status callbacks in flight at once; the rest
            wait their turn (a benchmark's hundreds of users would otherwise spend the
            stand-in's CPU in the HTTP client's pool bookkeeping, not in the app).
        messages: Every message by sid, in creation order (inbound and outbound).
        deliveries: Every webhook and status callback the stand-in made, in order.
    """

    account_sid: str = SANDBOX_ACCOUNT_SID
    auth_token: str = attrs.field(default=SANDBOX_AUTH_TOKEN, repr=False)
    whatsapp_from: str = SANDBOX_WHATSAPP_FROM
    webhook_url: str | None = None
    status_callbacks: bool = True
    read_receipts: bool = True
    delays: DeliveryDelays = attrs.Factory(DeliveryDelays)
    window_failure_status: Literal["failed", "undelivered"] = "failed"
    webhook_timeout: float = 15.0
    webhook_concurrency: int = 64
    clock: SandboxClock = attrs.Factory(SandboxClock)
    faults: FaultPlan = attrs.Factory(FaultPlan)
    templates: dict[str, Template] = attrs.Factory(dict)
    messages: dict[str, MessageRecord] = attrs.Factory(dict)
    media: dict[str, StoredMedia] = attrs.Factory(dict)
    deliveries: list[Delivery] = attrs.Factory(list)
    channel_install_sid: str = attrs.Factory(lambda: new_sid("XE"))
    last_inbound: dict[str, float] = attrs.Factory(dict)
    #: Recipients whose messages fail, by E.164 (``refuse_recipient``).
    recipient_refusals: dict[str, RecipientRefusal] = attrs.Factory(dict)
    base_url: str | None = attrs.field(default=None, init=False)
    #: Outbound sids by recipient address, in creation order (``received`` without a scan).
    _outbound: dict[str, list[str]] = attrs.field(factory=dict, init=False, repr=False)
    _inbound: dict[str, list[str]] = attrs.field(factory=dict, init=False, repr=False)
    #: Set when a message for that address is created, then replaced: per-recipient wake-ups.
    _arrived: dict[str, trio.Event] = attrs.field(factory=dict, init=False, repr=False)
    _in_flight: trio.CapacityLimiter = attrs.field(init=False, repr=False)
    app: ASGIApp = attrs.field(init=False, repr=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False, repr=False)
    _http: WebhookClient | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.app = faulting(build_app(self), self.faults)
        self._in_flight = trio.CapacityLimiter(self.webhook_concurrency)

    # ------------------------------------------------------------------ test-facing API

    def register_template(self, body: str, *, sid: str | None = None) -> str:
        """Register a content template; returns its ``ContentSid`` (``HX…``)."""
        template = Template(sid=sid or new_sid("HX"), body=body)
        self.templates[template.sid] = template
        return template.sid

    def inject(self, fault: Fault, *, times: int | None = 1, phone: str | None = None) -> None:
        """Make the next ``times`` API requests (about ``phone``, if given) fail this way."""
        self.faults.arm(fault, times=times, phone=phone)

    def clear_faults(self) -> None:
        self.faults.clear()

    def refuse_recipient(self, phone: str, code: int, *, sync: bool | None = None) -> None:
        """Make every message to ``phone`` fail with a recipient error (21610 unsubscribed,
        63014 blocked, 63024 invalid recipient, 63003 address not found), until
        ``accept_recipient``. ``sync`` (default: only for 21610) refuses the create with a
        400; otherwise the create is accepted and the message fails after it, as its
        status callback says."""
        message = RECIPIENT_ERROR_MESSAGES.get(code)
        if message is None:
            known = ", ".join(str(c) for c in sorted(RECIPIENT_ERROR_MESSAGES))
            raise ValueError(f"{code} is not a recipient error the stand-in knows ({known})")
        self.recipient_refusals[e164(phone)] = RecipientRefusal(
            code, message, code == 21610 if sync is None else sync
        )

    def accept_recipient(self, phone: str) -> None:
        self.recipient_refusals.pop(e164(phone), None)

    def refusal_now(self, to: str) -> ApiError | None:
        """The 400 a create to ``to`` gets from a synchronous recipient refusal, if any."""
        refusal = self.recipient_refusals.get(e164(to))
        if refusal is None or not refusal.sync:
            return None
        return ApiError(status=400, code=refusal.code, message=refusal.message)

    def advance(self, seconds: float) -> None:
        """Move the stand-in's clock (window and dates) forward without waiting."""
        self.clock.advance(seconds)

    def window_open(self, phone: str) -> bool:
        return window_open(self.last_inbound.get(e164(phone)), self.clock.now())

    def received(self, phone: str) -> list[MessageRecord]:
        """What was sent to ``phone``, oldest first, each with its current status.

        Includes API messages (``outbound-api``) and TwiML replies (``outbound-reply``);
        a message that failed (63016) is listed with its failed status, so a test can see
        the attempt as well as the outcome.
        """
        return [self.messages[sid] for sid in self._outbound.get(whatsapp_address(phone), ())]

    def sent_by(self, phone: str) -> list[MessageRecord]:
        """What ``phone`` sent to the account (inbound messages), oldest first."""
        return [self.messages[sid] for sid in self._inbound.get(whatsapp_address(phone), ())]

    async def user_says(
        self,
        phone: str,
        body: str = "",
        *,
        media: Sequence[Media] | None = None,
        duplicate: bool = False,
        bad_signature: bool = False,
        profile_name: str = "Sandbox User",
    ) -> str:
        """A WhatsApp user writes to the account: post the inbound webhook; return its sid.

        The message opens the user's 24-hour window before it is posted. ``duplicate``
        posts the identical request (same MessageSid and idempotency token) a second time,
        as a Twilio retry would; ``bad_signature`` signs with the wrong token. TwiML
        ``<Message>`` replies in the answers are recorded as ``outbound-reply``.
        """
        self._serving()
        if self.webhook_url is None:
            raise NoWebhookUrl("set TwilioStandIn.webhook_url before a user speaks")
        user = e164(phone)
        attachments = list(media or ())
        sid = new_sid("MM" if attachments else "SM")
        now = self.clock.wall()
        stored = [
            StoredMedia(new_sid("ME"), sid, item.content_type, item.content) for item in attachments
        ]
        for item in stored:
            self.media[item.sid] = item
        urls = tuple(self._media_url(item) for item in stored)
        self.messages[sid] = MessageRecord(
            sid=sid,
            account_sid=self.account_sid,
            direction="inbound",
            from_=whatsapp_address(user),
            to=self.whatsapp_from,
            body=body,
            status="received",
            date_created=now,
            date_updated=now,
            date_sent=now,
            media_urls=urls,
        )
        self._inbound.setdefault(whatsapp_address(user), []).append(sid)
        self.last_inbound[user] = self.clock.now()
        params = inbound_params(
            sid=sid,
            account_sid=self.account_sid,
            from_phone=user,
            to=self.whatsapp_from,
            body=body,
            profile_name=profile_name,
            media=[(item.content_type, url) for item, url in zip(stored, urls, strict=True)],
        )
        token = str(uuid.uuid4())
        url = self.webhook_url
        for _ in range(2 if duplicate else 1):
            replies = await self._post("inbound", url, params, sid, token, bad_signature)
            if replies:
                self._record_replies(user, replies)
        return sid

    # ------------------------------------------------------------------ used by the server

    def create_message(self, request: CreateRequest) -> MessageRecord:
        """Store an accepted create request and start its life; returns the new record.

        Free text outside the user's window is accepted like any other message, then fails
        with 63016, as Twilio does.
        """
        _, nursery = self._serving()
        now = self.clock.wall()
        record = MessageRecord(
            sid=new_sid("MM" if request.media_urls else "SM"),
            account_sid=self.account_sid,
            direction="outbound-api",
            from_=request.from_,
            to=request.to,
            body=request.body,
            status="accepted" if request.messaging_service_sid else "queued",
            date_created=now,
            date_updated=now,
            media_urls=request.media_urls,
            content_sid=request.content_sid,
            messaging_service_sid=request.messaging_service_sid,
            status_callback=request.status_callback,
        )
        self._add_outbound(record)
        closed = request.is_free_form and not self.window_open(request.to)
        refusal = self.recipient_refusals.get(e164(request.to))
        nursery.start_soon(self._live, record.sid, closed, refusal)
        return record

    async def wait_received(self, phone: str, count: int = 1) -> list[MessageRecord]:
        """Wait until ``phone`` has received at least ``count`` messages; return them.

        Woken by every outbound message, so tests and benchmarks wait without polling.
        """
        address = whatsapp_address(phone)
        while len(self._outbound.get(address, ())) < count:
            await self._arrived.setdefault(address, trio.Event()).wait()
        return self.received(phone)

    def _add_outbound(self, record: MessageRecord) -> None:
        """Store a message to a user and wake whoever waits for that user's messages."""
        self.messages[record.sid] = record
        self._outbound.setdefault(record.to, []).append(record.sid)
        arrived = self._arrived.pop(record.to, None)
        if arrived is not None:
            arrived.set()

    def _record_replies(self, user: str, replies: Sequence[TwimlReply]) -> None:
        _, nursery = self._serving()
        for reply in replies:
            now = self.clock.wall()
            record = MessageRecord(
                sid=new_sid("MM" if reply.media_urls else "SM"),
                account_sid=self.account_sid,
                direction="outbound-reply",
                from_=self.whatsapp_from,
                to=whatsapp_address(user),
                body=reply.body,
                status="queued",
                date_created=now,
                date_updated=now,
                media_urls=reply.media_urls,
                status_callback=reply.status_callback,
            )
            self._add_outbound(record)
            nursery.start_soon(self._live, record.sid, False, None)

    def _media_url(self, item: StoredMedia) -> str:
        path = f"{messages_path(self.account_sid)}/{item.message_sid}/Media/{item.sid}"
        return f"{self.base_url}{path}"

    def _serving(self) -> tuple[WebhookClient, trio.Nursery]:
        if self._http is None or self._nursery is None:
            raise NotServing("use `async with serve_twilio(standin)` first")
        return self._http, self._nursery

    # ------------------------------------------------------------------ message life

    async def _live(
        self, sid: str, window_closed: bool, refusal: RecipientRefusal | None = None
    ) -> None:
        """Walk one outbound message through its statuses, posting a callback for each."""
        if self.messages[sid].status == "accepted":
            await self._become(sid, "queued")
        await trio.sleep(self.delays.sent)
        if refusal is not None:
            await self._become(sid, "failed", error=(refusal.code, refusal.message))
            return
        if window_closed:
            await self._become(
                sid, self.window_failure_status, error=(63016, WINDOW_CLOSED_MESSAGE)
            )
            return
        await self._become(sid, "sent")
        await trio.sleep(self.delays.delivered)
        await self._become(sid, "delivered")
        if self.read_receipts:
            await trio.sleep(self.delays.read)
            await self._become(sid, "read")

    async def _become(self, sid: str, status: str, *, error: tuple[int, str] | None = None) -> None:
        now = self.clock.wall()
        record = self.messages[sid]
        error_code, error_message = error if error is not None else (None, None)
        record = attrs.evolve(
            record,
            status=status,
            date_updated=now,
            date_sent=now if status == "sent" else record.date_sent,
            error_code=error_code if error is not None else record.error_code,
            error_message=error_message if error is not None else record.error_message,
        )
        self.messages[sid] = record
        if self.status_callbacks and record.status_callback:
            params = status_params(record, channel_install_sid=self.channel_install_sid)
            await self._post(
                "status", record.status_callback, params, sid, str(uuid.uuid4()), False
            )

    # ------------------------------------------------------------------ requests to the app

    async def _post(
        self,
        kind: Literal["inbound", "status"],
        url: str,
        params: dict[str, str],
        sid: str,
        idempotency_token: str,
        bad_signature: bool,
    ) -> list[TwimlReply] | None:
        """POST a signed form the way Twilio does; returns the answer's TwiML replies if usable.

        One retry after a failed connection (Twilio's default ``rc=1``, ``rp=ct``); the
        outcome is recorded in ``deliveries`` with the debugger code Twilio would log.
        """
        token = _WRONG_TOKEN if bad_signature else self.auth_token
        headers = {
            "user-agent": "TwilioProxy/1.1",
            "accept": "*/*",
            "x-home-region": "us1",
            "i-twilio-idempotency-token": idempotency_token,
            "x-twilio-signature": sign(token, url, params),
            "content-type": _FORM,
        }
        body = urlencode(params).encode("ascii")
        answer: WebhookAnswer | None = None
        code: int | None = None
        for attempt in range(2):
            try:
                async with self._in_flight:
                    answer = await self._exchange(url, headers, body)
            except WebhookConnectError:
                code = 11205
                if attempt == 0:
                    continue
            except WebhookTimeout:
                code = 11205
            except WebhookTransportError:
                code = 11200
            else:
                code = None
            break
        replies: list[TwimlReply] | None = None
        if answer is not None:
            code, replies = _judge(kind, answer)
        self.deliveries.append(
            Delivery(
                kind=kind,
                url=url,
                params=tuple(params.items()),
                message_sid=sid,
                status_code=None if answer is None else answer.status,
                debugger_code=code,
            )
        )
        return replies

    async def _exchange(self, url: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        """One POST to the app, its whole answer read within ``webhook_timeout`` from the
        request's first byte (connecting has ``CONNECT_TIMEOUT`` of its own); raises the
        client's errors. ``benchmarks.standin_webhooks`` overrides this method to compare
        HTTP clients under the same stand-in.
        """
        client, _ = self._serving()
        answer = await client.post(url, headers, body, answer_within=self.webhook_timeout)
        return WebhookAnswer(answer.status, answer.content_type, answer.body)


def _judge(kind: str, answer: WebhookAnswer) -> tuple[int | None, list[TwimlReply] | None]:
    """The debugger code for an answer, and the TwiML replies in it (inbound only)."""
    if answer.status >= 400:
        return 11217, None
    if kind == "status" or answer.status == 204:
        return None, None
    if not answer.content_type:
        return 12300, None
    try:
        return None, parse_twiml(answer.body.decode("utf-8", "replace"))
    except TwimlError:
        return 12100, None


@asynccontextmanager
async def serve_twilio(
    standin: TwilioStandIn | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[TwilioStandIn]:
    """Serve a stand-in (a fresh one by default) for the duration of the block.

    The status-callback tasks live in a nursery inside this block: leaving it stops the
    server, then cancels whatever callbacks were still waiting.
    """
    standin = standin if standin is not None else TwilioStandIn()
    try:
        async with (
            WebhookClient(
                connect_timeout=CONNECT_TIMEOUT, keepalive_expiry=KEEPALIVE_EXPIRY
            ) as http,
            trio.open_nursery() as nursery,
        ):
            standin._http, standin._nursery = http, nursery
            try:
                async with serve_standin(standin.app, host, port) as url:
                    standin.base_url = url
                    yield standin
            finally:
                standin.base_url = None
                nursery.cancel_scope.cancel()
    finally:
        # Only once every callback task has ended: a task whose sleep ended in the same
        # tick as the cancel runs on until its next checkpoint and must still find them.
        standin._http = standin._nursery = None
