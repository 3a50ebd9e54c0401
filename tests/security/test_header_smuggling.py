"""Request smuggling and identity injection, over raw TLS sockets and gRPC metadata.

Ambiguous or malformed framing (RFC 9112 sections 2.2, 5, 6 and 7) is refused by the HTTP
parser with uvicorn's ``400 Bad Request`` ("Invalid HTTP request received.") before the
application runs, so the back-end receives nothing, although each request carries a valid
token and a valid message. Headers and metadata that name a user never change the identity:
that comes from the verified token only, and the tasks back-end's per-user data proves it.
"""

from __future__ import annotations

import socket

import grpc
import httpx
import pytest
from google.protobuf import json_format

from dialog.v1 import message_pb2
from tests.security.clients import (
    INVALID_HTTP,
    TIMEOUT_S,
    RawWebSocket,
    bearer,
    grpc_send,
    post_message,
    raw_tls,
    recorded,
    status_of,
    text_message,
)
from tests.security.conftest import Recorder
from tests.support.stack import Stack, wait_until

BODY = b'{"content":{"type":"text","text":"smuggled"}}'
CHUNKED_BODY = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
CL = b"Content-Length: %d\r\n" % len(BODY)
TE = b"Transfer-Encoding: chunked\r\n"

# name -> (request line, header lines after Host and Authorization, body)
MALFORMED: dict[str, tuple[bytes, bytes, bytes]] = {
    "Content-Length and Transfer-Encoding": (b"", CL + TE, CHUNKED_BODY),
    "Transfer-Encoding and Content-Length": (b"", TE + CL, CHUNKED_BODY),
    "two different Content-Length": (b"", CL + b"Content-Length: 5\r\n", BODY),
    "two equal Content-Length": (b"", CL + CL, BODY),
    "Content-Length negative": (b"", b"Content-Length: -1\r\n", BODY),
    "Content-Length with a plus sign": (b"", b"Content-Length: +%d\r\n" % len(BODY), BODY),
    "Content-Length with a space inside": (b"", b"Content-Length: 4 6\r\n", BODY),
    "two Transfer-Encoding chunked": (b"", TE + TE, CHUNKED_BODY),
    "Transfer-Encoding xchunked": (b"", b"Transfer-Encoding: xchunked\r\n", CHUNKED_BODY),
    "Transfer-Encoding chunked with a vertical tab": (
        b"",
        b"Transfer-Encoding: chunked\x0b\r\n",
        CHUNKED_BODY,
    ),
    "Transfer-Encoding identity": (b"", b"Transfer-Encoding: identity\r\n" + CL, BODY),
    "chunk size not hex": (b"", TE, b"zz\r\n" + BODY + b"\r\n0\r\n\r\n"),
    "chunk size overflowing 64 bits": (
        b"",
        TE,
        b"1" + b"f" * 17 + b"\r\n" + BODY + b"\r\n0\r\n\r\n",
    ),
    "chunk size negative": (b"", TE, b"-1\r\n" + BODY + b"\r\n0\r\n\r\n"),
    "chunk data without its CRLF": (b"", TE, b"%x\r\n%sXX0\r\n\r\n" % (len(BODY), BODY)),
    "chunk extension with a bare LF": (b"", TE, b"%x;a\nb\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)),
    "obs-fold continuation": (b"", b"X-Note: a\r\n  continued\r\n" + CL, BODY),
    "obs-fold on the first header": (b"", b" X-Note: a\r\n" + CL, BODY),
    "header name with a space": (b"", b"X Note: a\r\n" + CL, BODY),
    "space before the colon": (b"", b"Content-Length : %d\r\n" % len(BODY), BODY),
    "tab in a header name": (b"", b"X\tNote: a\r\n" + CL, BODY),
    "DEL in a header name": (b"", b"X\x7fNote: a\r\n" + CL, BODY),
    "header line without a colon": (b"", b"XNote\r\n" + CL, BODY),
    "NUL in a header value": (b"", b"X-Note: a\x00b\r\n" + CL, BODY),
    "NUL in a header name": (b"", b"X-No\x00te: ab\r\n" + CL, BODY),
    "bare CR in a header value": (b"", b"X-Note: a\rb\r\n" + CL, BODY),
    "request line with an extra token": (b"POST /messages HTTP/1.1 extra", CL, BODY),
    "space in the request target": (b"POST /mess ages HTTP/1.1", CL, BODY),
    "lower-case method": (b"post /messages HTTP/1.1", CL, BODY),
}


def request(stack: Stack, user: str, line: bytes, headers: bytes, body: bytes) -> bytes:
    return (
        (line or b"POST /messages HTTP/1.1")
        + b"\r\nHost: localhost\r\n"
        + f"Authorization: Bearer {stack.token(user)}\r\n".encode()
        + headers
        + b"\r\n"
        + body
    )


@pytest.mark.parametrize(("line", "headers", "body"), MALFORMED.values(), ids=MALFORMED.keys())
def test_ambiguous_or_malformed_framing_is_400(
    guarded: Stack, attacker: Recorder, line: bytes, headers: bytes, body: bytes
) -> None:
    answer = raw_tls(guarded, request(guarded, attacker.user, line, headers, body), read_s=3)
    assert answer.startswith(INVALID_HTTP), answer[:200]
    assert answer.endswith(b"Invalid HTTP request received."), answer[-200:]
    assert attacker.messages() == []


def test_bare_lf_line_endings_are_400(guarded: Stack, attacker: Recorder) -> None:
    head = request(guarded, attacker.user, b"", CL, BODY).replace(b"\r\n", b"\n")
    answer = raw_tls(guarded, head, read_s=3)
    assert answer.startswith(INVALID_HTTP), answer[:200]
    assert attacker.messages() == []


def test_an_http2_preface_on_the_https_port_is_400(guarded: Stack) -> None:
    answer = raw_tls(guarded, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", read_s=3)
    assert answer.startswith(INVALID_HTTP), answer[:200]


def test_absolute_form_target_is_served_as_the_tokens_user(
    guarded: Stack, attacker: Recorder
) -> None:
    # RFC 9112 section 3.2.2: a server MUST accept the absolute form; the authority in it
    # changes nothing here (no virtual hosts), and the identity still comes from the token.
    line = b"POST https://evil.example/messages HTTP/1.1"
    answer = raw_tls(
        guarded,
        request(guarded, attacker.user, line, CL + b"Connection: close\r\n", BODY),
        read_s=3,
    )
    assert status_of(answer) == 200, answer[:200]
    assert [m["text"] for m in attacker.messages()] == ["smuggled"]


# --- a body that never completes --------------------------------------------------------------


def post_metrics(stack: Stack) -> dict[str, float]:
    """``POST /messages`` requests handled so far, by result code, from ``/metrics``."""
    with httpx.Client(verify=stack.ssl_context(), timeout=TIMEOUT_S) as client:
        text = client.get(f"{stack.base_url}/metrics").text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("dialog_gateway_request_duration_seconds_count{") and (
            'method="POST /messages"' in line and 'surface="http"' in line
        ):
            code = line.split('code="', 1)[1].split('"', 1)[0]
            counts[code] = counts.get(code, 0) + float(line.split()[-1])
    return counts


def unexpected_errors(stack: Stack) -> int:
    gateway = next(p for p in stack.processes if p.name == "gateway")
    return gateway.log().count("unexpected error on POST /messages")


CUT_OFF = {
    "malformed chunk after the head": (TE, b"zz\r\n", False),
    "disconnect in the middle of the body": (b"Content-Length: 100\r\n", b'{"content', True),
}


@pytest.mark.parametrize(("headers", "body", "hang_up"), CUT_OFF.values(), ids=CUT_OFF.keys())
def test_a_body_that_never_completes_is_not_an_internal_error(
    guarded: Stack, attacker: Recorder, headers: bytes, body: bytes, hang_up: bool
) -> None:
    # The application has started when the body breaks off: Starlette's ClientDisconnect
    # must be handled as a client error, not logged as an unexpected failure with a
    # traceback (a log flood anyone can trigger) nor counted as a 200 in the metrics.
    before, errors_before = post_metrics(guarded), unexpected_errors(guarded)
    head = request(guarded, attacker.user, b"", headers, body)
    if hang_up:
        sock = socket.create_connection(("127.0.0.1", guarded.ports["http"]), timeout=TIMEOUT_S)
        with guarded.ssl_context().wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(head)
    else:
        assert raw_tls(guarded, head, read_s=3).startswith(INVALID_HTTP)
    wait_until(
        lambda: sum(post_metrics(guarded).values()) > sum(before.values()),
        5,
        "the gateway to finish the request",
    )
    assert unexpected_errors(guarded) == errors_before
    assert post_metrics(guarded).get("200", 0) == before.get("200", 0)
    assert attacker.messages() == []


# RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code to any
# HTTP/1.1 request message that lacks a Host header field and to any request message that
# contains more than one Host header field line".


def test_two_host_headers_are_400(guarded: Stack, attacker: Recorder) -> None:
    extra = b"Host: evil.example\r\nConnection: close\r\n"
    head = request(guarded, attacker.user, b"", CL + extra, BODY)
    answer = raw_tls(guarded, head, read_s=3)
    assert status_of(answer) == 400, answer[:200]
    assert attacker.messages() == []


def test_a_request_without_host_is_400(guarded: Stack, attacker: Recorder) -> None:
    head = request(guarded, attacker.user, b"", CL + b"Connection: close\r\n", BODY)
    head = head.replace(b"Host: localhost\r\n", b"")
    answer = raw_tls(guarded, head, read_s=3)
    assert status_of(answer) == 400, answer[:200]
    assert attacker.messages() == []


# --- identity injection ---------------------------------------------------------------------

VICTIM = "victim-of-injection"


@pytest.fixture(scope="module")
def victim_task(guarded: Stack) -> str:
    r = post_message(
        guarded,
        {
            "content": {"type": "task.create", "text": "victim's task"},
            "context": {"service": "tasks"},
        },
        token=guarded.token(VICTIM),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["replies"][-1]["content"]["data"]["id"])


TASK_LIST = {"content": {"type": "task.list"}, "context": {"service": "tasks"}}
IDENTITY_HEADERS = {
    "X-Forwarded-For": "127.0.0.2",
    "X-Forwarded-User": VICTIM,
    "X-User-Id": VICTIM,
    "X-Dialog-User": VICTIM,
    "X-Remote-User": VICTIM,
    "X-Authenticated-User": VICTIM,
    "Remote-User": VICTIM,
    "Forwarded": f'for=127.0.0.2;by="{VICTIM}"',
}


@pytest.mark.parametrize("name", IDENTITY_HEADERS)
def test_identity_headers_over_http_change_nothing(
    guarded: Stack, attacker: Recorder, victim_task: str, name: str
) -> None:
    token = guarded.token(attacker.user)
    headers = {name: IDENTITY_HEADERS[name]}
    listing = post_message(guarded, TASK_LIST, token=token, headers=headers)
    assert listing.status_code == 200
    assert listing.json()["replies"][-1]["content"]["data"] == {"tasks": []}
    chat = post_message(guarded, text_message("who am i"), token=token, headers=headers)
    assert chat.status_code == 200
    assert [m["text"] for m in attacker.messages()] == ["who am i"]
    assert recorded(guarded, VICTIM) == []


def _task_list() -> message_pb2.Message:
    msg = message_pb2.Message()
    msg.content.type = "task.list"
    msg.context.service = "tasks"
    return msg


@pytest.mark.parametrize("key", ["x-dialog-user", "x-forwarded-user", "x-user-id"])
async def test_identity_metadata_over_grpc_changes_nothing(
    guarded: Stack, attacker: Recorder, victim_task: str, key: str
) -> None:
    metadata = (*bearer(guarded.token(attacker.user)), (key, VICTIM))
    result = await grpc_send(guarded, metadata, _task_list())
    assert result.code == grpc.StatusCode.OK, result.details
    final = result.replies[-1]
    assert final.content.type == "task.list"
    assert json_format.MessageToDict(final.content.data) == {"tasks": []}
    chat = await grpc_send(guarded, metadata)
    assert chat.code == grpc.StatusCode.OK
    assert len(attacker.messages()) == 1
    assert recorded(guarded, VICTIM) == []


def test_identity_header_at_the_websocket_handshake_changes_nothing(
    guarded: Stack, attacker: Recorder, victim_task: str
) -> None:
    headers = {"Authorization": f"Bearer {guarded.token(attacker.user)}", "X-Dialog-User": VICTIM}
    with RawWebSocket(guarded, headers) as ws:
        assert ws.accepted
        ws.send_text(
            '{"id": "w-list", "content": {"type": "task.list"}, "context": {"service": "tasks"}}'
        )
        ws.send_text('{"id": "w-chat", "content": {"type": "text", "text": "ws who am i"}}')
        texts = ws.read_texts(4)
    assert '"tasks":[]' in next(t for t in texts if '"task.list"' in t and "w-list" in t)
    assert [m["id"] for m in attacker.messages()] == ["w-chat"]
    assert recorded(guarded, VICTIM) == []
