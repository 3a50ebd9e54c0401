"""Logging set-up: one format, and no credential ever written to a log.

Tokens never belong in a URL, and the gateway refuses them there, but a
refused request is still logged by the HTTP server with its query string.
``RedactCredentials`` rewrites such values before any handler sees them.
"""

from __future__ import annotations

import logging
import re

SENSITIVE_PARAMS = ("token", "access_token", "jwt", "auth", "ticket", "password", "api_key")
_QUERY_VALUE = re.compile(
    r"(?P<key>[?&](?:" + "|".join(SENSITIVE_PARAMS) + r"))=(?P<value>[^&\s\"']*)", re.IGNORECASE
)
_BEARER = re.compile(r"(?P<key>bearer)\s+(?P<value>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with credential values in query strings and bearer headers replaced."""
    text = _QUERY_VALUE.sub(lambda m: f"{m['key']}={REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m['key']} {REDACTED}", text)


class RedactCredentials(logging.Filter):
    """Apply ``redact`` to a record's message and string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


class QuietClientFaults(logging.Filter):
    """Drops two uvicorn error records that a client can cause at will.

    uvicorn 0.54 reports every handshake answered with an HTTP denial (401, 403,
    429) as "returned without completing handshake", and every text frame with
    invalid UTF-8 (which it rightly closes with 1007) with a traceback. Both
    answers are the gateway's own, counted in its metrics; logged at ERROR they
    would let anyone flood the log.
    """

    MESSAGES = frozenset(
        {
            "ASGI callable returned without completing handshake.",
            "Invalid UTF-8 sequence received from client.",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "uvicorn.error" and record.msg in self.MESSAGES)


def setup_logging(level: str, process: str = "") -> None:
    """One line per record on stderr, with credentials redacted on every handler; each line
    names ``process`` when given (a worker: ``worker 1``)."""
    where = f"[{process}] " if process else ""
    logging.basicConfig(
        level=level.upper(), format=f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactCredentials())
        handler.addFilter(QuietClientFaults())
