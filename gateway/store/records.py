"""What the stores return: plain frozen records and decision enums (pure, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class DedupStatus(enum.Enum):
    """What a message id (its idempotency key) means when it arrives."""

    NEW = "new"  # first time within the TTL: forward it
    REPLAY = "replay"  # same id, same body: answer with the stored outcome, do not forward
    CONFLICT = "conflict"  # same id, different body: refuse


@dataclass(frozen=True)
class DedupResult:
    """The answer of ``Store.remember``.

    ``outcome`` is set only for a REPLAY whose first delivery already recorded
    its outcome; a REPLAY without one is still ``pending`` (the first delivery is
    in progress, or died before recording it: see ``Store.record_outcome``).
    """

    status: DedupStatus
    outcome: bytes | None = None

    @property
    def pending(self) -> bool:
        return self.status is DedupStatus.REPLAY and self.outcome is None


class EntityVerdict(enum.Enum):
    """Where a message's seq falls in its entity's order."""

    APPLY = "apply"  # seq == last + 1: apply it (the store has moved last to seq)
    DUPLICATE = "duplicate"  # seq <= last: already applied
    GAP = "gap"  # seq > last + 1: refused, ``expected`` tells the client what to send


@dataclass(frozen=True)
class EntityDecision:
    """The verdict, and the seq the entity expects next after this decision."""

    verdict: EntityVerdict
    expected: int


def varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint, least significant group first."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# The protobuf tags ``OutcomeTemplate`` splices: field 1, length-delimited (an embedded
# message of a repeated field) and field 6, varint (its ``seq``).
MESSAGE_TAG = b"\x0a"
SEQ_TAG = b"\x30"


@dataclass(frozen=True)
class WorkTemplate:
    """The body of a message's in-flight record, but for its log seq, which the log gives
    in the same step (``Store.admit``): ``before``, the seq in decimal, then ``after``.

    A store fills it in without running the caller's code (Redis: in Lua, the same way).
    """

    before: bytes
    after: bytes

    def fill(self, seq: int) -> bytes:
        return self.before + str(seq).encode() + self.after


@dataclass(frozen=True)
class OutcomeTemplate:
    """The outcome of a message's key, but for the seq of its final reply, which the log
    gives in the same step (``Store.complete``): a serialized protobuf message whose
    field 1 is a repeated message field (``dialog.backend.v1.ConverseResponse``).

    ``prefix`` is that message with the entries before the final reply; ``final`` is the
    final reply (a ``dialog.v1.Message``, field 6 ``seq`` a uint64) serialized without a
    seq. ``fill`` appends the final reply as one more field 1 entry, with its seq as a
    field 6 after its other fields: protobuf reads fields in any order, so it decodes as
    if the reply had been serialized with that seq. A store fills it in without running
    the caller's code (Redis: in Lua, the same way).
    """

    prefix: bytes
    final: bytes

    def fill(self, seq: int) -> bytes:
        tail = SEQ_TAG + varint(seq)
        length = varint(len(self.final) + len(tail))
        return self.prefix + MESSAGE_TAG + length + self.final + tail


@dataclass(frozen=True)
class Intake:
    """A client message on its way in (``Store.admit``).

    ``event`` is the message as its user's log keeps it; ``work.fill(seq)`` is the body of
    its in-flight record once the log gave it ``seq``. ``key`` (with ``body_hash``,
    held for ``hold_s``) is its idempotency key, "" for none; ``entity`` (with
    ``entity_seq``) its entity's store key, "" when it is not ordered.
    """

    user: str
    event: bytes
    message_id: str
    backend: str
    work: WorkTemplate
    lease_s: float
    key: str = ""
    body_hash: str = ""
    hold_s: float = 0.0
    entity: str = ""
    entity_seq: int = 0


@dataclass(frozen=True)
class Admitted:
    """The answer of ``Store.admit``: the key's and the entity's decisions (None when the
    intake had none); ``seq`` and ``inflight`` are set only when the message was taken
    in (appended to its log and kept in flight), else they are 0 and ""."""

    dedup: DedupResult | None = None
    entity: EntityDecision | None = None
    seq: int = 0
    inflight: str = ""

    @property
    def taken(self) -> bool:
        return self.seq > 0


@dataclass(frozen=True)
class Completion:
    """A message's final reply on its way out (``Store.complete``).

    ``event`` is the reply as its user's log keeps it; ``outcome.fill(seq)`` is what repeats
    of the message's ``key`` get (kept ``ttl_s``) once the log gave the reply ``seq``;
    ``inflight`` is the message's in-flight record, settled now ("" for none).
    """

    user: str
    event: bytes
    key: str = ""
    outcome: OutcomeTemplate | None = None
    ttl_s: float = 0.0
    inflight: str = ""


@dataclass(frozen=True)
class Event:
    """One message in a user's event log."""

    seq: int
    body: bytes
    at_s: float


@dataclass(frozen=True)
class EventsPage:
    """The answer of ``Store.events_after``.

    ``reset`` is True when the requested point is no longer in the log (trimmed,
    or beyond ``last_seq``): ``events`` is then empty and the caller must tell the
    client, which resumes from ``first_seq - 1``. ``first_seq`` is the oldest seq
    still kept (``last_seq + 1`` when the log is empty).
    """

    events: tuple[Event, ...]
    reset: bool
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class QueuedMessage:
    """A claimed entry of a back-end's inbound queue. ``attempts`` counts this delivery."""

    entry_id: str
    message_id: str
    backend: str
    body: bytes
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    """A message that used up its delivery attempts. ``entry_id`` names the dead letter."""

    entry_id: str
    message_id: str
    backend: str
    body: bytes
    attempts: int
    error: str
    dead_at_s: float
