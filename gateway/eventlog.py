"""A user's recent deliveries with strictly increasing seq numbers (pure)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dialog.v1 import message_pb2


@dataclass
class EventLog:
    """The last ``max_len`` messages delivered to one user, in seq order."""

    max_len: int
    last_seq: int = 0
    _entries: deque[message_pb2.Message] = field(default_factory=deque)

    def append(self, msg: message_pb2.Message) -> message_pb2.Message:
        """Assign the next seq to ``msg`` and keep it."""
        self.last_seq += 1
        msg.seq = self.last_seq
        self._entries.append(msg)
        while len(self._entries) > self.max_len:
            self._entries.popleft()
        return msg

    def since(self, after_seq: int) -> list[message_pb2.Message] | None:
        """Messages with seq > ``after_seq``; ``None`` when some were already trimmed."""
        if after_seq >= self.last_seq:
            return []
        first = self._entries[0].seq if self._entries else self.last_seq + 1
        if after_seq + 1 < first:
            return None
        return [m for m in self._entries if m.seq > after_seq]
