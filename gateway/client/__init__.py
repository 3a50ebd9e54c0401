"""Command-line WebSocket client of the gateway (``dialog-gateway send`` / ``chat``).

:mod:`gateway.client.frames` is the pure core (outgoing JSON, what each incoming
frame prints); :mod:`gateway.client.session` is the asyncio shell that owns the socket.
"""

from gateway.client.frames import (
    CHAT_HELP,
    DEFAULT_CA_FILE,
    SUBPROTOCOL,
    ClientError,
    Rendering,
    build_request,
    gateway_url,
    parse_input,
    render,
)
from gateway.client.session import chat, client_ssl_context, send

__all__ = [
    "CHAT_HELP",
    "DEFAULT_CA_FILE",
    "SUBPROTOCOL",
    "ClientError",
    "Rendering",
    "build_request",
    "chat",
    "client_ssl_context",
    "gateway_url",
    "parse_input",
    "render",
    "send",
]
