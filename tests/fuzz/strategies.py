"""What the fuzz suite sends: Hypothesis strategies for each route's requests.

A strategy draws a *spec* (what to send: fields, how to sign, how to encode, how to
transfer), never the final bytes: Twilio's signature covers the server's public URL, whose
port is only known once the server runs, so `tests.fuzz.test_app` turns a spec into a
request against the live server. A spec's repr is what Hypothesis prints as the minimal
failing example, so long values are shortened there.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import quote

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from clients.twilio.forms import KNOWN_STATUSES

#: Fixed seed, bounded examples, no deadline (a request crosses a real socket and a real
#: database), no example database (runs must not depend on earlier runs).
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    print_blob=False,
    report_multiple_bugs=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def short(value: object, limit: int = 120) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...<{len(text)} chars>...{text[-limit // 4 :]}"


class ShortRepr:
    """Printed by its ``__repr__`` in Hypothesis' reports too (its pretty-printer would
    otherwise print every field of an attrs class in full: a 100 kB body)."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# -- values ---------------------------------------------------------------------------------

HEX = "0123456789abcdef"
VALID_PHONES = (
    "+15551230001",
    "+15551230002",
    "+15550001111",
    "+5215512345678",  # Mexico's mobile prefix: the identity is +525512345678
    "+525512345678",
    "+5511912345678",
    "+551112345678",
    "+447700900123",
    "+34612345678",
    "+1 (555) 123-0003",
)
HOSTILE_PHONES = (
    "",
    "+",
    "whatsapp:",
    "whatsapp:+",
    "+999999999999999999999",
    "+1",
    "abc",
    "+\u0661\u0665\u0665\u0665\u0661\u0662\u0663\u0660\u0660\u0660\u0661",  # Arabic digits
    "+1555123000\uff11",  # a fullwidth digit
    "whatsapp:+15551230001\x00",
    "+15551230001" * 50,
    "sms:+15551230001",
    "\u202e+15551230001",
)
HOSTILE_NUMBERS = (
    "",
    "-1",
    "11",
    "99999999999999999999999",
    "1e3",
    " 1",
    "1 ",
    "+1",
    "1_0",
    "0x1",
    "\u0663",
    "\uff11",
    "1.0",
    "NaN",
    "9" * 5000,
)
HOSTILE_ERROR_CODES = (
    "0",
    "999999",
    "1000000",
    "99999999999999999999999",
    "9223372036854775808",
    "2147483648",
    "-1",
    "-99999999999999999999",
    "1e5",
    "\u0663",
    "0x10",
    " 12",
    "+5",
    "1_000",
    "InvalidSandboxRequest",
    "9" * 5000,
)
HOSTILE_SIDS = (
    "",
    "SM",
    "SM123",
    "XX" + "0" * 32,
    "SM" + "0" * 33,
    "SM" + "-" * 32,
    "sm" + "a" * 32,
    "SM" + "\u00e9" * 32,
    "SM" + "\u0663" * 32,
    "SM" + "a" * 10_000,
    "SM" + "0" * 31 + "\x00",
)


def phones(prefix: str = "whatsapp:") -> st.SearchStrategy[str]:
    valid = st.sampled_from(VALID_PHONES).map(lambda p: prefix + p)
    return st.one_of(valid, valid, valid, st.sampled_from(HOSTILE_PHONES), st.text(max_size=20))


# -- Twilio webhooks ------------------------------------------------------------------------

Signing = Literal["valid", "missing", "wrong", "wrong-token", "other-url", "empty"]
SIGNINGS: tuple[Signing, ...] = ("valid", "missing", "wrong", "wrong-token", "other-url", "empty")
FORM = "application/x-www-form-urlencoded"
CONTENT_TYPES = (
    FORM,
    FORM,
    FORM,
    f"{FORM}; charset=utf-8",
    "application/json",
    "text/plain",
    "multipart/form-data; boundary=xyz",
    "",
    "application/x-www-form-urlencoded\x7f",
)
#: How the encoded form is spoiled, if at all.
Spoil = Literal["none", "raw-0xff", "percent-ff", "cut-utf8", "semicolons", "300-fields"]
SPOILS: tuple[Spoil, ...] = (
    "none",
    "none",
    "none",
    "raw-0xff",
    "percent-ff",
    "cut-utf8",
    "semicolons",
    "300-fields",
)


@attrs.frozen
class FormSpec(ShortRepr):
    """One POST to a Twilio webhook."""

    path: str
    pairs: tuple[tuple[str, str], ...]
    signing: Signing
    content_type: str
    spoil: Spoil
    chunked: bool
    query: str

    def __repr__(self) -> str:
        pairs = ", ".join(f"({short(n, 40)}, {short(v, 60)})" for n, v in self.pairs)
        return (
            f"FormSpec(path={self.path!r}, pairs=[{pairs}], signing={self.signing!r}, "
            f"content_type={self.content_type!r}, spoil={self.spoil!r}, "
            f"chunked={self.chunked!r}, query={self.query!r})"
        )


def _field(
    draw: st.DrawFn,
    clean: bool,
    name: str,
    valid: st.SearchStrategy[str],
    hostile: st.SearchStrategy[str] | None = None,
) -> list[tuple[str, str]]:
    """A field: in a clean form always there and valid; otherwise left out about one time
    in eight, and hostile about one time in three."""
    if clean:
        return [(name, draw(valid))]
    if draw(st.integers(0, 7)) == 0:
        return []
    if hostile is not None and draw(st.integers(0, 2)) == 0:
        return [(name, draw(hostile))]
    return [(name, draw(valid))]


VALID_SIDS = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(("SM", "MM")),
    st.text(HEX, min_size=32, max_size=32),
)
ANY_TEXT = st.text(max_size=40)


@st.composite
def extra_fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    return draw(
        st.lists(
            st.tuples(
                st.one_of(
                    st.sampled_from(["AccountSid", "ApiVersion", "WaId", "Latitude", "Body"]),
                    st.text(max_size=12),
                ),
                st.text(max_size=30),
            ),
            max_size=4,
        )
    )


@st.composite
def inbound_forms(draw: st.DrawFn) -> FormSpec:
    """``POST /webhooks/twilio/whatsapp``: an inbound WhatsApp message; half of them clean
    (what Twilio sends), half with hostile fields, signatures, encodings."""
    clean = draw(st.booleans())
    valid_phones = st.sampled_from(VALID_PHONES).map(lambda p: "whatsapp:" + p)
    pairs: list[tuple[str, str]] = []
    pairs += _field(
        draw, clean, "MessageSid", VALID_SIDS, st.one_of(st.sampled_from(HOSTILE_SIDS), ANY_TEXT)
    )
    pairs += _field(
        draw, clean, "From", valid_phones, st.one_of(st.sampled_from(HOSTILE_PHONES), ANY_TEXT)
    )
    pairs += [("To", "whatsapp:+14155238886")]
    pairs += _field(
        draw,
        clean,
        "Body",
        st.text(max_size=60),
        st.sampled_from(["", " ", "\x00", "x" * 4097, "\U0001f642" * 1000, "\ud7ff\ue000"]),
    )
    pairs += _field(draw, clean, "ProfileName", st.text(max_size=20))
    media = draw(st.integers(0, 3))
    pairs += _field(draw, clean, "NumMedia", st.just(str(media)), st.sampled_from(HOSTILE_NUMBERS))
    for i in range(media):
        pairs += _field(draw, clean, f"MediaUrl{i}", st.just(f"https://api.twilio.com/ME{i}"))
        pairs += _field(draw, clean, f"MediaContentType{i}", st.sampled_from(["image/jpeg", ""]))
    pairs += _field(
        draw, clean, "MessageType", st.sampled_from(["text", "location"]), st.just("x" * 100)
    )
    if not clean:
        pairs += draw(extra_fields())
    return _form_spec(draw, clean, "/webhooks/twilio/whatsapp", pairs)


@st.composite
def status_forms(draw: st.DrawFn) -> FormSpec:
    """``POST /webhooks/twilio/status``: a delivery status; half clean (an error code at
    the edges included), half hostile."""
    clean = draw(st.booleans())
    statuses = st.sampled_from(sorted(KNOWN_STATUSES))
    hostile_statuses = st.one_of(
        st.sampled_from(["", "Delivered", "deliveredx", "read\x00"]), st.text(max_size=10)
    )
    pairs: list[tuple[str, str]] = []
    pairs += _field(
        draw, clean, "MessageSid", VALID_SIDS, st.one_of(st.sampled_from(HOSTILE_SIDS), ANY_TEXT)
    )
    pairs += _field(draw, clean, "MessageStatus", statuses, hostile_statuses)
    if draw(st.booleans()):
        pairs += _field(draw, clean, "SmsStatus", statuses, hostile_statuses)
    pairs += _field(
        draw,
        clean,
        "To",
        st.sampled_from(VALID_PHONES).map(lambda p: "whatsapp:" + p),
        st.one_of(st.sampled_from(HOSTILE_PHONES), ANY_TEXT),
    )
    pairs += [("From", "whatsapp:+14155238886")]
    if draw(st.booleans()):
        codes = st.one_of(
            st.sampled_from(["63016", "30008", "63051"]),
            st.sampled_from(HOSTILE_ERROR_CODES),
            st.integers(-(2**70), 2**70).map(str),
        )
        pairs += [("ErrorCode", draw(codes))]
    pairs += _field(draw, clean, "ErrorMessage", st.text(max_size=30))
    if draw(st.booleans()):
        pairs += [("ChannelStatusMessage", draw(st.text(max_size=30)))]
    if not clean:
        pairs += draw(extra_fields())
    return _form_spec(draw, clean, "/webhooks/twilio/status", pairs)


def _form_spec(draw: st.DrawFn, clean: bool, path: str, pairs: list[tuple[str, str]]) -> FormSpec:
    order = draw(st.permutations(range(len(pairs)))) if draw(st.booleans()) else range(len(pairs))
    return FormSpec(
        path=path,
        pairs=tuple(pairs[i] for i in order),
        signing="valid" if clean else draw(st.sampled_from(("valid", "valid", *SIGNINGS))),
        content_type=FORM if clean else draw(st.sampled_from(CONTENT_TYPES)),
        spoil="none" if clean else draw(st.sampled_from(SPOILS)),
        chunked=draw(st.integers(0, 4)) == 0,
        query="" if clean else draw(st.sampled_from(["", "", "a=b", "x=%FF", "=&&="])),
    )


# -- the ElevenLabs post-call webhook -------------------------------------------------------

ElSigning = Literal[
    "valid", "missing", "wrong-secret", "stale", "future", "no-timestamp", "garbage",
    "two-v0", "v1-only", "other-body", "huge", "empty-parts",
]  # fmt: skip
EL_SIGNINGS: tuple[ElSigning, ...] = (
    "valid", "valid", "valid", "valid", "missing", "wrong-secret", "stale", "future",
    "no-timestamp", "garbage", "two-v0", "v1-only", "other-body", "huge", "empty-parts",
)  # fmt: skip

#: Bodies no JSON encoder writes: nesting, encodings, numbers and constants at the edges.
HOSTILE_JSON: tuple[bytes, ...] = (
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b"[" * 1_000 + b"]" * 1_000,
    b'{"type":"post_call_transcription","data":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    b"",
    b"null",
    b"[]",
    b'"text"',
    b"NaN",
    b"1e400",
    b"9" * 5_000,
    b"\xff\xfe\x00{",
    b'\xef\xbb\xbf{"type":"post_call_audio","data":{}}',
    b'{"type":"post_call_transcription","data":{"conversation_id":"\\ud800","agent_id":"a"}}',
    b'{"type":"post_call_transcription","type":"call_initiation_failure","data":{}}',
    b'{"type":"post_call_transcription","data":{"conversation_id":"c\\u0000","agent_id":"a",'
    b'"metadata":{"phone_call":{"external_number":"+15551230001"}}}}',
    b'{"type": "post_call_transcription", "data": {"conversation_id": "conv_inf", '
    b'"agent_id": "a", "metadata": {"start_time_unix_secs": Infinity, '
    b'"phone_call": {"external_number": "+15551230001"}}}}',
    b'{"type":"post_call_transcription"',
    b"\x00" * 100,
)


@attrs.frozen
class PostCallSpec(ShortRepr):
    """One POST to the post-call webhook: an envelope, or raw bytes."""

    envelope: Any  # a JSON value, or None when ``raw`` is the body
    raw: bytes | None
    signing: ElSigning
    content_type: str
    chunked: bool

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.envelope, allow_nan=True).encode()

    def conversation_id(self) -> str | None:
        if not isinstance(self.envelope, dict):
            return None
        data = self.envelope.get("data")
        value = data.get("conversation_id") if isinstance(data, dict) else None
        return value.strip() if isinstance(value, str) else None

    def __repr__(self) -> str:
        what = (
            f"raw={short(self.raw)}"
            if self.raw is not None
            else f"envelope={short(self.envelope, 600)}"
        )
        return (
            f"PostCallSpec({what}, signing={self.signing!r}, "
            f"content_type={self.content_type!r}, chunked={self.chunked!r})"
        )


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
EDGE_NUMBERS = st.one_of(
    st.integers(1_600_000_000, 1_900_000_000),
    st.sampled_from([0, -1, 10**30, -(10**20), 1e300, -1e300, 2**63, 2**64, 253402300800]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.none(),
)


@st.composite
def conversation_data(draw: st.DrawFn, kind: str, clean: bool = False) -> dict[str, Any]:
    """A conversation's ``data``; when ``clean``, with the ids and a phone number it needs
    to be recorded (the rest still drawn freely)."""
    valid_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=4, max_size=16).map(
        lambda s: f"conv_{s}"
    )
    conversation_ids = st.one_of(
        valid_ids,
        st.sampled_from(["", " ", "c" * 5_000, "\u202econv", "conv\ud7ff"]),
        st.integers(),
    )
    data: dict[str, Any] = {}
    if clean:
        data["conversation_id"] = draw(valid_ids)
        data["agent_id"] = "agent_sandbox"
        phone: Any = draw(st.sampled_from(VALID_PHONES))
    else:
        if draw(st.integers(0, 9)):
            data["conversation_id"] = draw(conversation_ids)
        if draw(st.integers(0, 9)):
            data["agent_id"] = draw(
                st.one_of(st.just("agent_sandbox"), st.text(max_size=8), st.none())
            )
        phone = draw(st.one_of(phones(prefix=""), st.integers(), st.none()))
    if kind == "call_initiation_failure":
        data["failure_reason"] = draw(st.sampled_from(["busy", "no-answer", "unknown", "", 7]))
        data["metadata"] = {"body": {draw(st.sampled_from(["To", "to_number"])): phone}}
        return data
    data["status"] = draw(st.sampled_from(["done", "failed", "processing", None, 3]))
    metadata: dict[str, Any] = {
        "start_time_unix_secs": draw(EDGE_NUMBERS),
        "call_duration_secs": draw(EDGE_NUMBERS),
    }
    if clean or draw(st.integers(0, 5)):
        metadata["phone_call"] = {"external_number": phone}
    if draw(st.booleans()):
        metadata["termination_reason"] = draw(st.sampled_from(["voicemail detected", "", 5]))
    if draw(st.booleans()):
        metadata["batch_call"] = {
            "batch_call_id": draw(st.text(max_size=10)),
            "batch_call_recipient_id": draw(st.one_of(st.text(max_size=10), st.integers())),
        }
    data["metadata"] = metadata if clean else draw(st.one_of(st.just(metadata), JSON_VALUES))
    data["transcript"] = draw(
        st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["agent", "user", "tool", 1]),
                        "message": st.one_of(st.text(max_size=40), st.none(), st.integers()),
                    }
                ),
                max_size=4,
            ),
            JSON_VALUES,
        )
    )
    data["analysis"] = {"transcript_summary": draw(st.one_of(st.text(max_size=40), JSON_SCALARS))}
    data["conversation_initiation_client_data"] = {
        "dynamic_variables": draw(
            st.dictionaries(
                st.one_of(
                    st.sampled_from(["user_name", "system__conversation_id"]), st.text(max_size=8)
                ),
                JSON_VALUES,
                max_size=4,
            )
        )
    }
    if draw(st.booleans()):
        data[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    return data


@st.composite
def post_call_specs(draw: st.DrawFn) -> PostCallSpec:
    """``POST /webhooks/elevenlabs/post-call``: half of them clean (signed, a call with its
    ids and number), half hostile (bodies, envelopes, signatures)."""
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["post_call_transcription", "call_initiation_failure"]))
        clean_envelope: dict[str, Any] = {
            "type": kind,
            "event_timestamp": draw(EDGE_NUMBERS),
            "data": draw(conversation_data(kind, clean=True)),
        }
        return PostCallSpec(
            clean_envelope, None, "valid", "application/json", draw(st.integers(0, 5)) == 0
        )
    raw: bytes | None = None
    envelope: Any = None
    shape = draw(st.integers(0, 5))
    if shape == 0:
        raw = draw(st.sampled_from(HOSTILE_JSON))
    elif shape == 1:
        envelope = draw(JSON_VALUES)
    else:
        kind = draw(
            st.sampled_from(
                [
                    "post_call_transcription",
                    "post_call_transcription",
                    "call_initiation_failure",
                    "post_call_audio",
                    "unknown_type",
                    "",
                ]
            )
        )
        envelope = {
            "type": draw(st.one_of(st.just(kind), st.just(kind), JSON_SCALARS)),
            "event_timestamp": draw(EDGE_NUMBERS),
            "data": draw(st.one_of(conversation_data(kind), conversation_data(kind), JSON_VALUES)),
        }
    return PostCallSpec(
        envelope=envelope,
        raw=raw,
        signing=draw(st.sampled_from(EL_SIGNINGS)),
        content_type=draw(
            st.sampled_from(["application/json", "application/json", "text/plain", "", FORM])
        ),
        chunked=draw(st.integers(0, 5)) == 0,
    )


# -- the JSON API and health ----------------------------------------------------------------

Auth = Literal[
    "valid", "missing", "wrong", "basic", "lowercase", "padded", "scheme-only", "prefix", "longer"
]
AUTHS: tuple[Auth, ...] = (
    "valid", "valid", "valid", "valid", "missing", "wrong", "basic", "lowercase", "padded",
    "scheme-only", "prefix", "longer",
)  # fmt: skip
PHONE_SEGMENTS = (
    "%2B15551230001",
    "%2B15550001111",
    "+15551230001",
    "15551230001",
    "%20" + "15551230001",
    "%2B5215512345678",
    "%2B525512345678",
    "%2B999999999999999999999",
    "%2B",
    "%00",
    "%FF%FE",
    "..%2F..%2Fetc%2Fpasswd",
    "../metrics",
    "%2B15551230001/extra",
    "%2B1555" + "1" * 5_000,
    "%E2%80%AE%2B15551230001",
)
QUERY_NAMES = ("active", "waiting", "all", "state", "limit", "messages", "x")
QUERY_VALUES = (
    "true", "false", "1", "0", "yes", "maybe", "", "50", "1000", "1001", "-1", "0",
    "99999999999999999999", "9223372036854775808", "1e3", "\u0663", " 5", "waiting", "failed",
    "gone", "\x00",
)  # fmt: skip
API_METHODS = (
    "GET",
    "GET",
    "GET",
    "GET",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
)


@attrs.frozen
class ApiSpec(ShortRepr):
    """One request to ``/api/...``."""

    method: str
    path: str
    route: str
    query: tuple[tuple[str, str], ...]
    auth: Auth

    def __repr__(self) -> str:
        return (
            f"ApiSpec(method={self.method!r}, path={short(self.path, 200)}, "
            f"query={short(self.query, 200)}, auth={self.auth!r})"
        )


@st.composite
def api_specs(draw: st.DrawFn) -> ApiSpec:
    which = draw(
        st.sampled_from(["list", "list", "one", "one", "one", "metrics", "optouts", "other"])
    )
    if which == "list":
        path, route = "/api/conversations", "/api/conversations"
    elif which == "optouts":
        path, route = "/api/optouts", "/api/optouts"
    elif which == "metrics":
        path, route = "/api/metrics", "/api/metrics"
    elif which == "one":
        segment = draw(
            st.one_of(
                st.sampled_from(PHONE_SEGMENTS),
                st.text(max_size=20).map(lambda s: quote(s, safe="")),
                st.text(max_size=20).map(lambda s: quote(s, safe="/+")),
            )
        )
        path, route = f"/api/conversations/{segment}", "/api/conversations/<phone>"
    else:
        segment = draw(
            st.sampled_from(["", "conversations/", "metrics/", "nope", "%2e%2e/healthz"])
        )
        path, route = f"/api/{segment}", "/api/<other>"
    query = draw(
        st.lists(
            st.tuples(
                st.sampled_from(QUERY_NAMES),
                st.one_of(st.sampled_from(QUERY_VALUES), st.text(max_size=8)),
            ),
            max_size=3,
        )
    )
    return ApiSpec(
        method=draw(st.sampled_from(API_METHODS)),
        path=path,
        route=route,
        query=tuple(query),
        auth=draw(st.sampled_from(AUTHS)),
    )


# -- the operators' routes: hand-off, operator message, resume --------------------------------

ControlAction = Literal["handoff", "messages", "resume"]
CONTROL_ACTIONS: tuple[ControlAction, ...] = ("handoff", "messages", "resume")
#: The fields each action takes (anything else is refused with 400).
CONTROL_FIELDS: dict[str, tuple[str, ...]] = {
    "handoff": ("reason", "operator"),
    "messages": ("text", "operator"),
    "resume": ("reason", "operator"),
}
#: Phones the control tests give a conversation first (a signed inbound message), so
#: well-formed requests reach the rules (200/202/409/422), not only 404.
CONTROL_PHONES = ("+15551230001", "+15551230002", "+447700900123")
#: String values at and past the routes' limits, and ones storage cannot take.
HOSTILE_STRINGS = (
    "",
    " ",
    "\t\\n ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "x" * 100,
    "x" * 101,
    "x" * 500,
    "x" * 501,
    "x" * 6_400,
    "x" * 6_401,
    "x" * 200_000,
    "\U0001f642" * 3_000,
    "\u202eright-to-left",
)
HOSTILE_CONTROL_BODIES: tuple[bytes, ...] = (
    *HOSTILE_JSON,
    b"text=hello",
    b"not json",
    b"{'text': 'single quotes'}",
    b'{"text": "a",}',
    b'{"text": "a"} trailing',
    b'{"text": NaN}',
    b'{"text": "hello", "text": 5}',
    b'{"text": "\\u0000"}',
    b'{"text": "\\ud800"}',
    b'{"text": "hi", "operator": "\\udfff"}',
    b'{"reason": ' + b"[" * 990 + b"]" * 990 + b"}",
    b'{"text": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    b'{"text": ' + b'{"a":' * 3_000 + b"1" + b"}" * 3_001,
    b'{"text": "' + b"y" * 2_000_000 + b'"}',
    b"\xef\xbb\xbf{}",
    b"   \n\t ",
    b"{}",
)
#: (No key with leading or trailing whitespace: h11 will not send one.)
IDEMPOTENCY_KEYS = (
    "",
    "a    b",
    "k" * 200,
    "k" * 201,
    "key with spaces",
    "key\twith-tab",
    "retry-1",
    "retry-1",
    "../../etc",
)


@attrs.frozen
class ControlSpec(ShortRepr):
    """One request to ``/api/conversations/<phone>/{handoff,messages,resume}``: a JSON
    value (``body``) or raw bytes (``raw``), or no body at all when both are None."""

    method: str
    action: str
    segment: str
    auth: Auth
    body: Any
    raw: bytes | None
    content_type: str
    idempotency_key: str | None
    chunked: bool

    @property
    def path(self) -> str:
        return f"/api/conversations/{self.segment}/{self.action}"

    def content(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.body is None:
            return b""
        return json.dumps(self.body, allow_nan=True).encode("utf-8", "surrogatepass")

    def __repr__(self) -> str:
        what = f"raw={short(self.raw)}" if self.raw is not None else f"body={short(self.body, 300)}"
        return (
            f"ControlSpec(method={self.method!r}, path={short(self.path, 200)}, {what}, "
            f"auth={self.auth!r}, content_type={self.content_type!r}, "
            f"idempotency_key={short(self.idempotency_key, 60)}, chunked={self.chunked!r})"
        )


def _control_value(name: str) -> st.SearchStrategy[Any]:
    valid = {
        "text": st.one_of(st.sampled_from(["hello from a person", "ok"]), st.text(max_size=60)),
        "reason": st.one_of(st.sampled_from(["operator", "complaint"]), st.text(max_size=40)),
        "operator": st.one_of(st.sampled_from(["alice", "bob", "api"]), st.text(max_size=20)),
    }[name]
    return st.one_of(valid, valid, st.sampled_from(HOSTILE_STRINGS), JSON_VALUES)


@st.composite
def control_specs(draw: st.DrawFn) -> ControlSpec:
    """``POST /api/conversations/<phone>/{handoff,messages,resume}``: half clean (the token,
    a phone with a conversation, a body of the route's fields), half hostile (tokens,
    phones, bodies, keys, methods)."""
    action = draw(st.sampled_from(CONTROL_ACTIONS))
    fields = CONTROL_FIELDS[action]
    key = draw(
        st.one_of(
            st.none(),
            st.none(),
            st.text("abcdefghij0123456789-", min_size=1, max_size=12),
            st.sampled_from(IDEMPOTENCY_KEYS),
        )
    )
    if draw(st.booleans()):
        body: dict[str, Any] = {}
        if action == "messages":
            body["text"] = draw(st.sampled_from(["hello from a person", "are you there?"]))
        if draw(st.booleans()):
            body["operator"] = draw(st.sampled_from(["alice", "bob"]))
        if action != "messages" and draw(st.booleans()):
            body["reason"] = draw(st.sampled_from(["operator", "complaint"]))
        phone = draw(st.sampled_from(CONTROL_PHONES))
        send_empty_object: bool = draw(st.booleans())
        return ControlSpec(
            method="POST",
            action=action,
            segment=quote(phone, safe=""),
            auth="valid",
            body=body if body or send_empty_object else None,
            raw=None,
            content_type="application/json",
            idempotency_key=key if action == "messages" else None,
            chunked=False,
        )
    segment = draw(
        st.one_of(
            st.sampled_from(CONTROL_PHONES).map(lambda p: quote(p, safe="")),
            st.sampled_from(CONTROL_PHONES).map(lambda p: p.lstrip("+")),
            st.sampled_from(PHONE_SEGMENTS),
            st.sampled_from(VALID_PHONES).map(lambda p: quote(p, safe="")),
            st.text(max_size=20).map(lambda s: quote(s, safe="")),
        )
    )
    raw: bytes | None = None
    body_value: Any = None
    shape = draw(st.integers(0, 4))
    if shape == 0:
        raw = draw(st.sampled_from(HOSTILE_CONTROL_BODIES))
    elif shape == 1:
        body_value = draw(JSON_VALUES)
    elif shape >= 2:
        names = st.one_of(
            st.sampled_from(fields),
            st.sampled_from(fields),
            st.sampled_from(["txt", "operater", "Text", "reason", "text", ""]),
            st.text(max_size=8),
        )
        chosen = draw(st.lists(names, max_size=4, unique=True))
        body_value = {name: draw(_control_value(name)) for name in chosen if name in fields}
        body_value.update({name: draw(JSON_VALUES) for name in chosen if name not in fields})
    return ControlSpec(
        method=draw(st.sampled_from(["POST", "POST", "POST", "POST", "GET", "PUT", "DELETE"])),
        action=action,
        segment=segment,
        auth=draw(st.sampled_from(AUTHS)),
        body=body_value,
        raw=raw,
        content_type=draw(
            st.sampled_from(["application/json", "application/json", "text/plain", "", FORM])
        ),
        idempotency_key=key,
        chunked=draw(st.integers(0, 5)) == 0,
    )


@attrs.frozen
class HealthSpec:
    method: str
    path: str


def health_specs() -> st.SearchStrategy[HealthSpec]:
    return st.builds(
        HealthSpec,
        st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]),
        st.sampled_from(["/healthz", "/readyz", "/healthz/", "/readyz?x=1", "/HEALTHZ"]),
    )


# -- one kept-alive connection: a refused request, then another ------------------------------

ROUTES = (
    "/webhooks/twilio/whatsapp",
    "/webhooks/twilio/status",
    "/webhooks/elevenlabs/post-call",
    "/api/conversations",
    "/api/conversations/%2B15551230001",
    "/api/metrics",
    "/api/optouts",
    "/api/conversations/%2B15551230001/handoff",
    "/api/conversations/%2B15551230001/messages",
    "/healthz",
    "/readyz",
)


@attrs.frozen
class KeepAliveSpec:
    """A first request the app refuses early (wrong method, too large, unsigned) on a
    kept-alive connection, then a small well-formed one on the same connection."""

    method: str
    path: str
    body_size: int
    chunked: bool
    content_type: str
    then: str
    #: ``httpx`` (its pool decides whether to reuse the connection) or ``raw`` (a socket
    #: that sends the next request as soon as the first answer is read).
    transport: str


def keep_alive_specs() -> st.SearchStrategy[KeepAliveSpec]:
    return st.builds(
        KeepAliveSpec,
        method=st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "GET"]),
        path=st.sampled_from(ROUTES),
        body_size=st.one_of(
            st.sampled_from([0, 10, 1_000, 16_384, 65_537, 70_000, 300_000, 1_000_000]),
            st.integers(0, 2_000_000),
        ),
        chunked=st.booleans(),
        content_type=st.sampled_from([FORM, "application/json", "text/plain"]),
        then=st.sampled_from(["GET /healthz", "GET /api/metrics", "POST /webhooks/twilio/status"]),
        transport=st.sampled_from(["httpx", "raw"]),
    )


# -- malformed HTTP, on raw sockets ---------------------------------------------------------

#: Each is complete or invalid at once, so the server has nothing to wait for. Left out on
#: purpose: a chunked body cut short (the server rightly waits for the rest) and
#: ``Transfer-Encoding: gzip`` (501 is what RFC 9112 asks for).
MALFORMED_HTTP: tuple[bytes, ...] = (
    b"\x00\x01\x02garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /healthz\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /h\xc3\xa9althz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5_000 + b"\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /webhooks/twilio/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /webhooks/twilio/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n",
    b"POST /webhooks/twilio/whatsapp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n",
    b"GET http://evil.example/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET /healthz HTTP/1.1\nHost: x\n\n",
    b"GET  /healthz  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get /healthz http/1.1\r\nHost: x\r\n\r\n",
)


def malformed_http() -> st.SearchStrategy[bytes]:
    garbage = st.binary(max_size=200).map(lambda b: b + b"\r\n\r\n")
    prefixed = st.binary(max_size=100).map(
        lambda b: b"POST /webhooks/twilio/whatsapp HTTP/1.1\r\nHost: x\r\n" + b + b"\r\n\r\n"
    )
    return st.one_of(st.sampled_from(MALFORMED_HTTP), garbage, prefixed)
