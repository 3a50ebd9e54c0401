"""Normalise what a contract example observed, so that a replay compares equal to its recording.

Pure: no I/O. Volatile values are replaced by placeholders that keep what the contract says
about them:

- a gateway-assigned id (32 lower-case hex digits, a uuid4) becomes ``<id:N>``, numbered in the
  order of first appearance, so that ``reply_to`` still has to equal the id it answers;
- a seq (``seq`` and ``last_seq`` keys, and the ``id:`` of a server-sent event) becomes
  ``<seq:N>``, N being its rank among the example's seqs: the order and the equalities of seqs
  are kept, their absolute values (which depend on the store) are not; a seq that is not a
  decimal string (or, for ``last_seq``, a whole number) is left as it is, so that a change of its
  JSON type shows;
- an RFC 3339 timestamp becomes ``<timestamp>``;
- a serial id (an ``id`` or ``entity`` made of decimal digits only, such as the id of a task,
  which the tasks back-end counts across users and also puts in the replies' ``entity``) becomes
  ``<serial:N>``, numbered like the ids;
- the example's user (a random ``sub`` per example) becomes ``<user>``;
- the free text of an error (the ``message`` of an HTTP error body, the ``text`` and
  ``data.message`` of an error message, a gRPC status's details, a close reason) becomes
  ``<text>``: it is written for people and may be reworded; the error ``code`` is the contract.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

UUID_HEX = re.compile(r"[0-9a-f]{32}")
DIGITS = re.compile(r"[0-9]{1,20}")
TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
SEQ_KEYS = frozenset({"seq", "last_seq"})
SERIAL_KEYS = frozenset({"id", "entity"})
TEXT = "<text>"


def normalise(observed: Any, *, user: str) -> Any:
    """``observed`` (JSON values) with its volatile values replaced by placeholders."""
    seqs = sorted(set(_seqs(observed)))
    ranks = {seq: rank for rank, seq in enumerate(seqs, start=1)}
    ids: dict[str, str] = {}
    serials: dict[str, str] = {}

    def number(table: dict[str, str], kind: str, value: str) -> str:
        return table.setdefault(value, f"<{kind}:{len(table) + 1}>")

    def scalar(key: str, value: Any, in_sse_event: bool) -> Any:
        if _is_seq(key, value, in_sse_event):
            return f"<seq:{ranks[int(value)]}>"
        if not isinstance(value, str):
            return value
        if UUID_HEX.fullmatch(value):
            return number(ids, "id", value)
        if key in SERIAL_KEYS and DIGITS.fullmatch(value):
            return number(serials, "serial", value)
        if TIMESTAMP.fullmatch(value):
            return "<timestamp>"
        return value.replace(user, "<user>") if user else value

    return _walk(_without_error_text(observed), scalar)


def _walk(value: Any, scalar: Callable[[str, Any, bool], Any], key: str = "") -> Any:
    if isinstance(value, dict):
        sse = _is_sse_event(value)
        return {
            k: _walk(v, scalar, k) if isinstance(v, dict | list) else scalar(k, v, sse)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _walk(v, scalar, key) if isinstance(v, dict | list) else scalar(key, v, False)
            for v in value
        ]
    return scalar(key, value, False)


def _seqs(value: Any, key: str = "", in_sse_event: bool = False) -> list[int]:
    if isinstance(value, dict):
        sse = _is_sse_event(value)
        return [seq for k, v in value.items() for seq in _seqs(v, k, sse)]
    if isinstance(value, list):
        return [seq for v in value for seq in _seqs(v, key)]
    return [int(value)] if _is_seq(key, value, in_sse_event) else []


def _is_seq(key: str, value: Any, in_sse_event: bool) -> bool:
    if key in SEQ_KEYS or (in_sse_event and key == "id"):
        if isinstance(value, str):
            return bool(DIGITS.fullmatch(value))
        # last_seq travels in a Struct, where every number is a JSON number.
        return key == "last_seq" and isinstance(value, int | float) and value == int(value)
    return False


def _is_sse_event(value: dict[str, Any]) -> bool:
    """A server-sent event as the replay records it: ``event``, ``id`` and ``data``."""
    return "data" in value and "event" in value and set(value) <= {"event", "id", "data"}


def _without_error_text(value: Any) -> Any:
    """``value`` with the free text of errors replaced by ``<text>``."""
    if isinstance(value, list):
        return [_without_error_text(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _without_error_text(v) for k, v in value.items()}
    error = out.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        out["error"] = {**error, "message": _text(error["message"])}
    content = out.get("content")
    if isinstance(content, dict) and content.get("type") == "error":
        content = dict(content)
        if isinstance(content.get("text"), str):
            content["text"] = _text(content["text"])
        data = content.get("data")
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            content["data"] = {**data, "message": _text(data["message"])}
        out["content"] = content
    if "code" in out:  # a gRPC status or a WebSocket close
        for key in ("details", "reason"):
            if isinstance(out.get(key), str):
                out[key] = _text(out[key])
    return out


def _text(value: str) -> str:
    """An empty text stays empty: whether there is one is part of the contract."""
    return TEXT if value else value
