"""The small base every adapter shares, in one import.

- ``AdapterConfig``: where to listen and which mesh credentials to present.
- ``ConverseServicer``: the Backend servicer base; subclasses implement ``handle``.
- ``start`` / ``serve``: run a servicer behind mutual TLS with health and reflection.
"""

from __future__ import annotations

from adapters.config import (
    CHAT_DEFAULT_PORT,
    TASKS_DEFAULT_PORT,
    AdapterConfig,
    env_int,
    env_str,
)
from adapters.envelope import Message, error_reply, event, reply
from adapters.runner import BACKEND_SERVICE_NAME, RunningServer, serve, start
from adapters.servicer import ConverseLimits, ConverseServicer

__all__ = [
    "BACKEND_SERVICE_NAME",
    "CHAT_DEFAULT_PORT",
    "TASKS_DEFAULT_PORT",
    "AdapterConfig",
    "ConverseLimits",
    "ConverseServicer",
    "Message",
    "RunningServer",
    "env_int",
    "env_str",
    "error_reply",
    "event",
    "reply",
    "serve",
    "start",
]
