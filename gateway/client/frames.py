"""The pure core of the command-line client: frames out, text in (no I/O).

It builds the outgoing JSON (:func:`build_request`), reads a chat line
(:func:`parse_input`), decides what an incoming frame prints (:func:`render`), and
writes the one-line error texts. Every error text is a whole line that starts
with ``error:``. The asyncio shell is :mod:`gateway.client.session`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf import json_format

from dialog.v1 import message_pb2
from gateway import translate
from gateway.errors import DialogError, Unauthenticated

SUBPROTOCOL = "dialog.v1.json"
DEFAULT_CA_FILE = "certs/ca.pem"
MAX_FRAME_BYTES = 1 << 20
TOKEN_HINT = "get a fresh token with dialog-gateway token"
CHAT_HELP = """\
Chat over one WebSocket connection; the conversation lasts for the session.
Replies stream as they arrive. Commands at the "you>" prompt:

  /service NAME   send the next messages to the back-end NAME (chat, tasks, ...)
  /service        go back to the default route
  /tasks TEXT     send TEXT once to the "tasks" service
  /help           show this help
  /quit           close the connection (Ctrl-D too)
"""


class ClientError(Exception):
    """A client-side failure; ``str(exc)`` is one printable ``error: ...`` line."""


class Rendering(NamedTuple):
    """What one incoming frame does to the terminal."""

    text: str  # print now, without a newline
    done: bool  # the request is finished
    error: str | None  # an ``error: ...`` line when the request failed


NOTHING = Rendering("", False, None)


@dataclass(frozen=True)
class SendText:
    text: str
    service: str


@dataclass(frozen=True)
class SwitchService:
    service: str  # "" is the default route


@dataclass(frozen=True)
class ShowText:
    text: str


@dataclass(frozen=True)
class Quit:
    pass


ChatCommand = SendText | SwitchService | ShowText | Quit | None


def gateway_url(host: str, port: int, *, tls: bool) -> str:
    """The WebSocket URL of a gateway: ``wss://HOST:PORT/ws`` (``ws://`` when TLS is off)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal (RFC 3986 section 3.2.2)
    return f"{'wss' if tls else 'ws'}://{host}:{port}/ws"


def build_request(text: str, *, request_id: str, conversation_id: str, service: str = "") -> str:
    """The JSON text frame of a user text message (``service`` empty: default route)."""
    msg = translate.Message(id=request_id, role=message_pb2.ROLE_USER)
    msg.content.type = "text"
    msg.content.text = text
    msg.context.conversation_id = conversation_id
    msg.context.service = service
    return translate.message_to_json(msg)


def auth_headers(token: str) -> dict[str, str]:
    """The handshake headers carrying ``token``; the token never goes in the URL."""
    token = token.strip()
    if not token or any(ch.isspace() for ch in token):
        raise ClientError(f"error: no usable token — {TOKEN_HINT}")
    return {"Authorization": f"Bearer {token}"}


def render_raw(raw: str | bytes, *, request_id: str = "", streamed: bool = False) -> Rendering:
    """:func:`render` for the raw text of a frame."""
    try:
        frame = translate.decode_json(raw, MAX_FRAME_BYTES)
    except DialogError as exc:
        return Rendering("", True, f"error: bad frame from the server — {exc.message}")
    return render(frame, request_id=request_id, streamed=streamed)


def render(frame: Any, *, request_id: str = "", streamed: bool = False) -> Rendering:
    """Decide what one decoded server frame prints for the request ``request_id``.

    Frames that answer another request (``context.reply_to`` set and different)
    print nothing: they are late replies to a request that timed out. Acks and
    events print nothing; a delta prints its text; an error frame or the final
    reply ends the request. The final reply prints its text (or its data as
    JSON) unless deltas were already ``streamed``. So text of a rendering that
    is not ``done`` is always delta text.
    """
    try:
        msg = translate.message_from_dict(frame)
    except DialogError as exc:
        return Rendering("", True, f"error: bad frame from the server — {exc.message}")
    reply_to = msg.context.reply_to
    if request_id and reply_to and reply_to != request_id:
        return NOTHING
    kind = msg.content.type
    if kind == translate.ERROR:
        return Rendering("", True, error_frame_line(msg))
    if kind == translate.DELTA:
        return Rendering(msg.content.text, False, None)
    if kind == translate.ACK or not translate.is_final(msg):
        return NOTHING
    return Rendering("" if streamed else final_text(msg), True, None)


def final_text(msg: translate.Message) -> str:
    """The printable body of a final reply: its text, else its data as JSON."""
    if msg.content.text or not msg.content.HasField("data"):
        return msg.content.text
    data = json_format.MessageToDict(msg.content.data)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def error_frame_line(msg: translate.Message) -> str:
    """``error: CODE — MESSAGE`` for an error frame (``content.data`` code/message)."""
    data = json_format.MessageToDict(msg.content.data) if msg.content.HasField("data") else {}
    code = str(data.get("code") or "error")
    message = str(data.get("message") or msg.content.text or "no details")
    hint = f" ({TOKEN_HINT})" if code == Unauthenticated.code else ""
    return f"error: {code} — {message}{hint}"


_STATUS_TEXT = {
    401: f"unauthenticated — {TOKEN_HINT}",
    403: "permission denied — this token may not use the gateway",
    404: "not found — is the URL path /ws?",
    429: "too many connections — close another session and retry",
    503: "unavailable — the gateway is starting or overloaded; retry shortly",
}

_CLOSE_HINTS = {
    1008: "policy violation",
    1009: "a message was too large",
    1011: "internal server error",
    1013: "the server is overloaded; retry later",
    4401: f"unauthenticated — {TOKEN_HINT}",
    4403: "permission denied",
}


def status_line(status: int) -> str:
    """The line for a handshake the server refused with HTTP ``status``."""
    text = _STATUS_TEXT.get(status, "the server refused the WebSocket handshake")
    return f"error: {status} {text}"


def close_line(code: int | None, reason: str) -> str:
    """The line for a connection the server closed before the reply ended."""
    if code is None:
        return "error: the connection was lost"
    detail = reason or _CLOSE_HINTS.get(code, "")
    if code == 4401 and reason:
        detail = f"{reason} — {TOKEN_HINT}"
    return f"error: the server closed the connection ({code}{': ' + detail if detail else ''})"


def parse_input(line: str, service: str) -> ChatCommand:
    """The command for one chat line; ``""`` (end of input) quits, a blank line is None."""
    if not line:
        return Quit()
    text = line.strip()
    if not text:
        return None
    if not text.startswith("/"):
        return SendText(text, service)
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name in ("/quit", "/exit"):
        return Quit()
    if name == "/help":
        return ShowText(CHAT_HELP.rstrip())
    if name == "/service":
        return SwitchService(rest)
    if name == "/tasks" and rest:
        return SendText(rest, "tasks")
    return ShowText(f"unknown command {name}; /help lists the commands")


def service_notice(service: str) -> str:
    """The line printed after ``/service``."""
    return (
        f"(messages now go to {service!r})" if service else "(messages now go to the default route)"
    )
