"""Fuzzing the pure parsers that read hostile input: messages, client frames and tokens.

Each property feeds arbitrary input to one parser and allows exactly two outcomes: a
result, or the documented error (a ``DialogError`` subclass; ``Unauthenticated`` for
tokens). Anything else (``OverflowError``, ``RecursionError``, ``KeyError``, …) would
become a 500 / INTERNAL / close 1011 at the boundary, so it fails here first.

The whole harness is bounded by ``max_examples`` to run in CI within a few seconds;
raise ``FUZZ_EXAMPLES`` locally for a longer run. WebSocket text frames and HTTP bodies
both go through ``parse_message``, so (a) covers them.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jwt.utils import base64url_decode

from gateway.auth import TokenHeader, TokenVerifier, bearer_token, mint_token, read_header
from gateway.client.frames import Rendering, render, render_raw
from gateway.errors import DialogError, Unauthenticated
from gateway.translate import (
    Message,
    decode_json,
    message_from_dict,
    message_to_dict,
    message_to_json,
    parse_message,
)

MAX_BYTES = 1 << 20
MAX_DEPTH = 8  # the security suite's JSON_MAX_DEPTH; the default (32) is tried too
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------
# Strategies: JSON values, message-shaped objects and their text
# ---------------------------------------------------------------------------

_keys = st.text(max_size=12)
_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    # Past 2**53 a JSON integer is not exact as a double; past ~1.8e308 it does not fit.
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_keys, inner, max_size=6),
    max_leaves=20,
)
_field_names = st.sampled_from(
    [
        "id",
        "role",
        "content",
        "context",
        "timestamp",
        "seq",
        "type",
        "text",
        "data",
        "conversation_id",
        "conversationId",
        "entity",
        "service",
        "reply_to",
        "replyTo",
        "labels",
    ]
)
_roles = st.sampled_from(
    ["user", "assistant", "system", "tool", "event", "unspecified", "ROLE_USER", "ROLE_X", ""]
)
_timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(
        ["1970-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z", "0001-01-01T00:00:00Z"]
    ),
    st.sampled_from(["2024-02-30T00:00:00Z", "2024-05-01T12:00:00+25:00", "2024-05-01 12:00:00Z"]),
    st.text(max_size=30),
)
_seqs = st.one_of(
    st.integers(min_value=-1, max_value=2**64).map(str),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)


def _sometimes(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``value``, sometimes any JSON value: near-valid input reaches deeper checks."""
    return st.one_of(value, value, value, json_values)


@st.composite
def message_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Message-shaped JSON objects: most fields right, some wrong, some unknown."""
    content = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "type": _sometimes(st.text(max_size=12)),
                "text": _sometimes(st.text(max_size=40)),
                "data": _sometimes(st.dictionaries(_keys, json_values, max_size=6)),
            },
        )
    )
    context = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "conversation_id": _sometimes(st.text(max_size=12)),
                "conversationId": _sometimes(st.text(max_size=12)),
                "entity": _sometimes(st.text(max_size=12)),
                "service": _sometimes(st.text(max_size=12)),
                "reply_to": _sometimes(st.text(max_size=12)),
                "labels": _sometimes(st.dictionaries(_keys, st.text(max_size=12), max_size=4)),
            },
        )
    )
    out = draw(
        st.fixed_dictionaries(
            {"content": _sometimes(st.just(content))},
            optional={
                "id": _sometimes(st.text(max_size=140)),
                "role": _sometimes(_roles),
                "context": _sometimes(st.just(context)),
                "timestamp": _timestamps,
                "seq": _seqs,
            },
        )
    )
    extra = draw(st.dictionaries(_field_names | _keys, json_values, max_size=2))
    return {**out, **extra} if draw(st.integers(0, 9)) == 0 else out


def nested_text(depth: int, leaf: Any, as_object: bool) -> str:
    """A message whose ``content.data`` holds ``leaf`` under ``depth`` arrays or objects.

    Written as text, because ``json.dumps`` itself cannot nest past the recursion limit.
    """
    opening, closing = ('{"k":', "}") if as_object else ("[", "]")
    inner = opening * depth + json.dumps(leaf) + closing * depth
    return '{"content":{"type":"t","data":{"deep":' + inner + "}}}"


_deep_texts = st.builds(
    nested_text,
    st.integers(min_value=0, max_value=5000),
    json_values,
    st.booleans(),
)
_json_texts = st.one_of(
    json_values.map(json.dumps),
    message_objects().map(json.dumps),
    # json.dumps writes NaN and Infinity, which are not JSON; the parser must refuse them.
    st.floats().map(lambda f: json.dumps({"content": {"type": "t", "data": {"n": f}}})),
)


# ---------------------------------------------------------------------------
# (a) parse_message / message_from_dict
# ---------------------------------------------------------------------------


def _check_accepted(msg: Message, max_depth: int) -> None:
    """An accepted message survives both round trips unchanged."""
    assert msg.content.type
    assert message_from_dict(message_to_dict(msg)) == msg
    text = message_to_json(msg)
    text.encode()  # the JSON form is always valid UTF-8 (no lone surrogates)
    assert parse_message(text, MAX_BYTES, max_depth) == msg


def _parse(raw: bytes | str, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> None:
    try:
        msg = parse_message(raw, max_bytes, max_depth)
    except DialogError as exc:
        assert exc.message and "\n" not in exc.message  # one line, shown to the client
        return
    _check_accepted(msg, max_depth)


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xff\xfe{")
@example(b'{"content":{"type":"t","data":{"n":1' + b"0" * 400 + b"}}}")
@example(b"[" * 100_000)
@example(b'{"content":{"type":"t"},"seq":"' + b"9" * 5000 + b'"}')
def test_parse_message_on_arbitrary_bytes(raw: bytes) -> None:
    _parse(raw)


@FUZZ
@given(st.text(max_size=2048))
@example('{"content":{"type":"\\ud800"}}')
@example('{"content":{"type":"t","data":{"\\udfff":"x"}}}')
def test_parse_message_on_arbitrary_text(raw: str) -> None:
    _parse(raw)


@FUZZ
@given(_json_texts, st.sampled_from([MAX_DEPTH, 32]))
@example(json.dumps({"content": {"type": "t", "data": {"n": 10**400}}}), MAX_DEPTH)
@example(json.dumps({"content": {"type": "t", "data": {"n": [-(10**309)]}}}), 32)
@example(json.dumps({"content": {"type": "t"}, "seq": 2**64}), MAX_DEPTH)
@example(json.dumps({"content": {"type": "t"}, "timestamp": "0000-01-01T00:00:00Z"}), 32)
def test_parse_message_on_json_values(raw: str, max_depth: int) -> None:
    _parse(raw, max_depth=max_depth)


@FUZZ
@given(st.one_of(json_values, message_objects()))
def test_message_from_dict_on_decoded_values(value: Any) -> None:
    """The client's ``render`` feeds decoded frames straight to ``message_from_dict``."""
    try:
        msg = message_from_dict(value)
    except DialogError:
        return
    _check_accepted(msg, 64)


@settings(FUZZ, max_examples=max(10, FUZZ_EXAMPLES // 10))
@given(_deep_texts, st.sampled_from([MAX_DEPTH, 32]))
def test_deep_structures_are_refused_cleanly(raw: str, max_depth: int) -> None:
    _parse(raw, max_depth=max_depth)
    _parse(raw.encode(), max_depth=max_depth)


@FUZZ
@given(_json_texts, st.integers(min_value=0, max_value=4096))
def test_the_size_limit_comes_first(raw: str, max_bytes: int) -> None:
    size = len(raw.encode())
    try:
        parse_message(raw, max_bytes, MAX_DEPTH)
    except DialogError as exc:
        assert (exc.code == "message_too_large") == (size > max_bytes)
        return
    assert size <= max_bytes


# ---------------------------------------------------------------------------
# (b) the client's frame decoder
# ---------------------------------------------------------------------------


def _check_rendering(out: Rendering) -> None:
    assert isinstance(out, Rendering)
    assert isinstance(out.text, str) and isinstance(out.done, bool)
    if out.error is not None:
        assert out.done and out.error.startswith("error:") and "\n" not in out.error


@st.composite
def server_frames(draw: st.DrawFn) -> dict[str, Any]:
    """Frames a (possibly broken) server might send: message objects of every reply kind."""
    frame = draw(message_objects())
    if isinstance(frame.get("content"), dict) and draw(st.booleans()):
        frame["content"]["type"] = draw(
            st.sampled_from(["ack", "delta", "error", "text", "task", "auth"])
        )
    if draw(st.booleans()):
        frame["context"] = {"reply_to": draw(st.sampled_from(["", "r1", "r2"]))}
    return frame


@FUZZ
@given(
    st.one_of(json_values, server_frames()),
    st.sampled_from(["", "r1"]),
    st.booleans(),
)
def test_render_never_raises(frame: Any, request_id: str, streamed: bool) -> None:
    _check_rendering(render(frame, request_id=request_id, streamed=streamed))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=1024),
        st.text(max_size=1024),
        _json_texts,
        server_frames().map(json.dumps),
    ),
    st.sampled_from(["", "r1"]),
    st.booleans(),
)
@example(b"\xff", "", False)
@example("[" * 100_000, "r1", True)
def test_render_raw_never_raises(raw: str | bytes, request_id: str, streamed: bool) -> None:
    _check_rendering(render_raw(raw, request_id=request_id, streamed=streamed))


def test_render_raw_refuses_an_oversized_frame_without_parsing_it() -> None:
    out = render_raw(b"x" * ((1 << 20) + 1))
    assert out.done and out.error is not None and "bad frame" in out.error


@pytest.mark.parametrize(
    "raw", ["1e999", "-1e999", "NaN", "Infinity", "1" * 5000, "[" * 5000 + "]" * 5000]
)
def test_hostile_json_texts_are_refused_with_dialog_errors(raw: str) -> None:
    with pytest.raises(DialogError):
        # "1" * 5000 decodes where ints have no digit limit: it is still not a message.
        message_from_dict(decode_json(raw, MAX_BYTES, MAX_DEPTH))


# ---------------------------------------------------------------------------
# (c) the token parser
# ---------------------------------------------------------------------------

SECRET = "fuzz-secret-" + "0123456789abcdef" * 3
NOW = 1_700_000_000.0
VERIFIER = TokenVerifier(SECRET, issuer="dialog-gateway", audience="dialog", leeway_s=0)
VALID = mint_token(
    SECRET, "alice", now_s=NOW, ttl_s=300, issuer="dialog-gateway", audience="dialog"
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _verify(token: str) -> str | None:
    """The subject, or None when refused; any other exception fails the test."""
    try:
        return VERIFIER.verify(token, now_s=NOW).subject
    except Unauthenticated as exc:
        assert exc.message and "\n" not in exc.message
        return None


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=200), st.text().map(lambda t: "Bearer " + t)))
@example("Bearer")
@example("bearer \t ")
@example("BEARER\u00a0x")
@example("Bearer a b")
def test_bearer_token_on_arbitrary_headers(header: str | None) -> None:
    try:
        token = bearer_token(header)
    except Unauthenticated:
        return
    assert header is not None
    assert token and token == token.strip()
    scheme, _, rest = header.strip().partition(" ")
    assert scheme.lower() == "bearer" and rest.strip() == token


_segments = st.one_of(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60
    ),
    json_values.map(lambda v: _b64url(json.dumps(v).encode())),
    st.binary(max_size=60).map(_b64url),
    st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "jku", "jwk"]), json_values, max_size=4
    ).map(lambda h: _b64url(json.dumps(h).encode())),
)
_token_texts = st.one_of(
    st.text(max_size=300),
    st.lists(_segments, min_size=1, max_size=5).map(".".join),
)


@FUZZ
@given(_token_texts)
@example("")
@example("..")
@example(_b64url(b"[" * 5000) + ".e30.c2ln")
@example(_b64url(b'{"alg":"HS256","kid":123}') + ".e30.")
@example(_b64url(b'{"alg":"none"}') + "." + _b64url(b'{"sub":"alice","exp":1e999}') + ".")
def test_read_header_and_verify_on_arbitrary_strings(token: str) -> None:
    try:
        header = read_header(token)
    except Unauthenticated:
        pass
    else:
        assert isinstance(header, TokenHeader) and isinstance(header.alg, str)
    assert _verify(token) is None


def _flip(token: str, index: int, bit: int) -> str:
    data = bytearray(token.encode())
    data[index % len(data)] ^= 1 << bit
    return data.decode("latin-1")


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    """A valid token with bytes flipped, cut, segments swapped, dropped or replaced."""
    parts = VALID.split(".")
    kind = draw(st.sampled_from(["flip", "truncate", "swap", "drop", "replace", "extend"]))
    if kind == "flip":
        token = VALID
        for _ in range(draw(st.integers(1, 3))):
            token = _flip(token, draw(st.integers(0, len(token) - 1)), draw(st.integers(0, 7)))
        return token
    if kind == "truncate":
        return VALID[: draw(st.integers(0, len(VALID) - 1))]
    if kind == "swap":
        order = draw(st.permutations(range(3)))
        return ".".join(parts[i] for i in order)
    if kind == "drop":
        del parts[draw(st.integers(0, 2))]
        return ".".join(parts)
    if kind == "replace":
        parts[draw(st.integers(0, 2))] = draw(_segments)
        return ".".join(parts)
    return VALID + draw(st.sampled_from([".", "=", "==", ".x", " ", "\x00"]))


def _same_signed_token(token: str) -> bool:
    """The same signing input and the same signature bytes as ``VALID``.

    Base64url is malleable: the spare low bits of a segment's last character, padding and
    characters outside the alphabet are ignored when decoding, so a changed *signature*
    segment can still carry the same signature. The signing input cannot change.
    """
    signed, _, signature = token.rpartition(".")
    valid_signed, _, valid_signature = VALID.rpartition(".")
    if signed != valid_signed:
        return False
    try:
        return base64url_decode(signature.encode()) == base64url_decode(valid_signature)
    except (ValueError, TypeError):
        return False


@FUZZ
@given(mutated_tokens())
def test_verify_refuses_mutated_valid_tokens(token: str) -> None:
    subject = _verify(token)
    assert subject is None or _same_signed_token(token), token


def test_the_unmutated_token_verifies() -> None:
    assert _verify(VALID) == "alice"
