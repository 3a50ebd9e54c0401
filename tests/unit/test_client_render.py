"""The pure core of the command-line client (gateway.client.frames), without an event loop."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import translate
from gateway.client import frames
from gateway.client.frames import (
    NOTHING,
    ClientError,
    Quit,
    Rendering,
    SendText,
    ShowText,
    SwitchService,
    auth_headers,
    build_request,
    close_line,
    gateway_url,
    parse_input,
    render,
    render_raw,
    status_line,
)

REQ = "0123abcd"


def frame(
    kind: str,
    text: str = "",
    *,
    reply_to: str = REQ,
    role: str = "assistant",
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    content: dict[str, Any] = {"type": kind}
    if text:
        content["text"] = text
    if data is not None:
        content["data"] = data
    out: dict[str, Any] = {"id": "srv-1", "role": role, "content": content, "seq": "7"}
    if reply_to:
        out["context"] = {"reply_to": reply_to, "conversation_id": "cli-1"}
    return out


# --- outgoing ---------------------------------------------------------------------


def test_build_request_is_a_valid_user_message() -> None:
    raw = build_request("hello", request_id=REQ, conversation_id="cli-1", service="chat")
    assert json.loads(raw) == {
        "id": REQ,
        "role": "user",
        "content": {"type": "text", "text": "hello"},
        "context": {"conversation_id": "cli-1", "service": "chat"},
    }
    msg = translate.parse_message(raw, max_bytes=1 << 20)
    assert msg.context.service == "chat"


def test_build_request_without_service_leaves_it_out() -> None:
    raw = build_request("hi", request_id=REQ, conversation_id="cli-1")
    assert "service" not in json.loads(raw)["context"]


@given(st.text(max_size=200))
def test_build_request_round_trips_any_text(text: str) -> None:
    raw = build_request(text, request_id=REQ, conversation_id="cli-1")
    assert translate.parse_message(raw, max_bytes=1 << 20).content.text == text


@pytest.mark.parametrize(
    ("host", "port", "tls", "url"),
    [
        ("localhost", 8080, True, "wss://localhost:8080/ws"),
        ("127.0.0.1", 9000, False, "ws://127.0.0.1:9000/ws"),
        ("::1", 8080, True, "wss://[::1]:8080/ws"),
    ],
)
def test_gateway_url(host: str, port: int, tls: bool, url: str) -> None:
    assert gateway_url(host, port, tls=tls) == url


def test_auth_headers_carry_a_bearer_token() -> None:
    assert auth_headers("abc.def.ghi\n") == {"Authorization": "Bearer abc.def.ghi"}


@pytest.mark.parametrize("token", ["", "  \n", "abc def"])
def test_auth_headers_refuse_unusable_tokens(token: str) -> None:
    with pytest.raises(ClientError, match=r"^error: no usable token"):
        auth_headers(token)


# --- incoming ---------------------------------------------------------------------

RENDER_CASES: list[tuple[str, dict[str, Any], bool, Rendering]] = [
    ("ack", frame("ack", role="system"), False, NOTHING),
    ("delta", frame("delta", "hel"), False, Rendering("hel", False, None)),
    ("event", frame("task.created", "t-1", role="event"), False, NOTHING),
    ("final", frame("text", "hello"), False, Rendering("hello", True, None)),
    ("final after deltas", frame("text", "hello"), True, Rendering("", True, None)),
    ("final, empty", frame("text"), False, Rendering("", True, None)),
    (
        "final, data only",
        frame("task.list", data={"tasks": ["a", "b"]}),
        False,
        Rendering('{"tasks":["a","b"]}', True, None),
    ),
    (
        "final without reply_to",
        frame("text", "hi", reply_to=""),
        False,
        Rendering("hi", True, None),
    ),
    ("late delta", frame("delta", "old", reply_to="other"), False, NOTHING),
    ("late final", frame("text", "old", reply_to="other"), False, NOTHING),
    ("late error", frame("error", "x", reply_to="other", role="system"), False, NOTHING),
    (
        "error frame",
        frame("error", "boom", role="system", data={"code": "backend_error", "message": "boom"}),
        True,
        Rendering("", True, "error: backend_error — boom"),
    ),
    (
        "error without reply_to",
        frame(
            "error", role="system", reply_to="", data={"code": "rate_limited", "message": "slow"}
        ),
        False,
        Rendering("", True, "error: rate_limited — slow"),
    ),
    (
        "error with text only",
        frame("error", "no route", role="system"),
        False,
        Rendering("", True, "error: error — no route"),
    ),
]


@pytest.mark.parametrize(
    ("frame_dict", "streamed", "expected"),
    [case[1:] for case in RENDER_CASES],
    ids=[case[0] for case in RENDER_CASES],
)
def test_render(frame_dict: dict[str, Any], streamed: bool, expected: Rendering) -> None:
    assert render(frame_dict, request_id=REQ, streamed=streamed) == expected


def test_render_unpacks_as_a_triple() -> None:
    text, done, error = render(frame("delta", "x"), request_id=REQ)
    assert (text, done, error) == ("x", False, None)


def test_render_without_request_id_takes_every_frame() -> None:
    assert render(frame("text", "hi", reply_to="any")) == Rendering("hi", True, None)


def test_unauthenticated_error_frame_says_how_to_fix_it() -> None:
    bad = frame("error", role="system", data={"code": "unauthenticated", "message": "expired"})
    error = render(bad, request_id=REQ).error
    assert error == "error: unauthenticated — expired (get a fresh token with dialog-gateway token)"


@pytest.mark.parametrize(
    "bad",
    [[], "text", {"content": {"type": "text"}, "surprise": 1}, {"id": "x"}],
    ids=["list", "string", "unknown field", "no content"],
)
def test_render_reports_invalid_frames(bad: Any) -> None:
    shown = render(bad, request_id=REQ)
    assert shown.done
    assert shown.error is not None
    assert shown.error.startswith("error: bad frame from the server — ")


def test_render_raw_decodes_text_and_bytes() -> None:
    raw = json.dumps(frame("delta", "hé"))
    assert render_raw(raw, request_id=REQ) == Rendering("hé", False, None)
    assert render_raw(raw.encode(), request_id=REQ) == Rendering("hé", False, None)


def test_render_raw_reports_malformed_json() -> None:
    shown = render_raw("{not json", request_id=REQ)
    assert shown.done
    assert shown.error is not None
    assert shown.error.startswith("error: bad frame from the server — malformed JSON")


@given(st.lists(st.text(min_size=1, max_size=20), max_size=10), st.text(max_size=50))
def test_streamed_text_is_the_deltas_only(deltas: list[str], final: str) -> None:
    printed, streamed = [], False
    for part in deltas:
        shown = render(frame("delta", part), request_id=REQ, streamed=streamed)
        printed.append(shown.text)
        streamed = streamed or (not shown.done and bool(shown.text))
    last = render(frame("text", final), request_id=REQ, streamed=streamed)
    assert last.done
    assert "".join(printed) + last.text == ("".join(deltas) if deltas else final)


# --- error lines --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (401, "error: 401 unauthenticated — get a fresh token with dialog-gateway token"),
        (429, "error: 429 too many connections — close another session and retry"),
        (500, "error: 500 the server refused the WebSocket handshake"),
    ],
)
def test_status_line(status: int, line: str) -> None:
    assert status_line(status) == line


@pytest.mark.parametrize(
    ("code", "reason", "line"),
    [
        (None, "", "error: the connection was lost"),
        (1000, "", "error: the server closed the connection (1000)"),
        (1011, "", "error: the server closed the connection (1011: internal server error)"),
        (1008, "bye", "error: the server closed the connection (1008: bye)"),
        (
            4401,
            "token expired",
            "error: the server closed the connection "
            "(4401: token expired — get a fresh token with dialog-gateway token)",
        ),
    ],
)
def test_close_line(code: int | None, reason: str, line: str) -> None:
    assert close_line(code, reason) == line


# --- chat commands ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("", Quit()),
        ("\n", None),
        ("   \n", None),
        ("hello there\n", SendText("hello there", "chat")),
        ("/quit\n", Quit()),
        ("/exit", Quit()),
        ("/service tasks\n", SwitchService("tasks")),
        ("/service\n", SwitchService("")),
        ("/tasks buy milk\n", SendText("buy milk", "tasks")),
        ("/help\n", ShowText(frames.CHAT_HELP.rstrip())),
        ("/nope x\n", ShowText("unknown command /nope; /help lists the commands")),
        ("/tasks\n", ShowText("unknown command /tasks; /help lists the commands")),
    ],
)
def test_parse_input(line: str, command: frames.ChatCommand) -> None:
    assert parse_input(line, "chat") == command


def test_chat_help_documents_every_command() -> None:
    for name in ("/service NAME", "/tasks TEXT", "/help", "/quit"):
        assert name in frames.CHAT_HELP


# --- purity -------------------------------------------------------------------------

IO_MODULES = {"asyncio", "websockets", "ssl", "socket", "grpc", "threading", "httpx"}


def test_the_core_imports_no_io_library() -> None:
    tree = ast.parse(Path(frames.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & IO_MODULES
