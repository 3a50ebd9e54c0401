"""What the durable inbound queue keeps for one message (pure, no I/O).

A queued message must be deliverable by any replica, long after the client that
sent it went away: besides the message itself, the entry names the user (the
back-end stream's ``x-dialog-user``, and whose event log gets the replies), the
client certificate identity, the idempotency key whose outcome the delivery
records, the entity seq it holds, and the W3C trace context of the message's span
(so that its delivery, however late, continues the message's trace). The encoding is
one line of JSON followed by the serialized ``dialog.v1.Message``; an entry written
before the trace context was kept has none, and decodes with none. ``log_seq`` comes last
in the JSON (``template``: the store splices it in); entries that have it elsewhere read
the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dialog.v1 import message_pb2
from gateway.store.records import WorkTemplate

Message = message_pb2.Message


@dataclass(frozen=True)
class QueuedWork:
    """One message waiting for its back-end.

    ``message`` is what the back-end receives (``seq`` is the entity seq, or 0);
    ``log_seq`` is the seq the message has in the user's event log, so that the
    outcome recorded for ``key`` repeats what the client was acknowledged with.
    ``entity`` is the store's (user-scoped) entity key, empty when unordered.
    ``traceparent`` and ``tracestate`` are the W3C trace context of the span the message
    was admitted in (empty: none).
    """

    user: str
    client: str
    key: str
    entity: str
    log_seq: int
    message: Message
    traceparent: str = ""
    tracestate: str = ""

    def encode(self) -> bytes:
        return self.template().fill(self.log_seq)

    def template(self) -> WorkTemplate:
        """The encoding but for ``log_seq``, which the store fills in (``Store.admit``):
        the JSON header ends with ``"log_seq": <seq>}``, as ``json.dumps`` writes it."""
        header = {
            "user": self.user,
            "client": self.client,
            "key": self.key,
            "entity": self.entity,
            **self.trace_context(),
        }
        head = json.dumps(header).encode()  # a non-empty object: ends with "}"
        return WorkTemplate(head[:-1] + b', "log_seq": ', b"}\n" + self.message.SerializeToString())

    @classmethod
    def decode(cls, data: bytes) -> QueuedWork:
        """Raises ``ValueError`` on an entry this build cannot read."""
        head, sep, body = data.partition(b"\n")
        if not sep:
            raise ValueError("not a queued message")
        try:
            fields = json.loads(head)
            return cls(
                user=str(fields["user"]),
                client=str(fields["client"]),
                key=str(fields["key"]),
                entity=str(fields["entity"]),
                log_seq=int(fields["log_seq"]),
                message=Message.FromString(body),
                traceparent=str(fields.get("traceparent", "")),
                tracestate=str(fields.get("tracestate", "")),
            )
        # json raises ValueError, a missing field KeyError, protobuf its DecodeError.
        except Exception as exc:
            raise ValueError(f"unreadable queued message: {exc}") from None

    def trace_context(self) -> dict[str, str]:
        """``traceparent`` and ``tracestate``, those that are set (a W3C carrier)."""
        values = {"traceparent": self.traceparent, "tracestate": self.tracestate}
        return {name: value for name, value in values.items() if value}

    def logged(self) -> Message:
        """The message as the user's event log holds it (the log's seq)."""
        out = Message()
        out.CopyFrom(self.message)
        out.seq = self.log_seq
        return out


def entity_key(user: str, entity: str) -> str:
    """The store key of a user's entity (entities are scoped per user)."""
    return f"{len(user)}:{user}:{entity}"
