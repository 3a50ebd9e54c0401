"""Channels and streams to the back-ends.

``BackendPool`` keeps one mutual-TLS channel per back-end for the whole
process. ``BackendStream`` is one ``Backend.Converse`` call, opened lazily per
client connection and back-end; it batches queued messages into one request
and routes replies to the waiting request by ``context.reply_to``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from dialog.backend.v1 import backend_pb2, backend_pb2_grpc
from dialog.v1 import message_pb2
from gateway.config import BackendConfig, RoutesConfig
from gateway.errors import InvalidMessage, Overloaded
from gateway.translate import is_final

log = logging.getLogger(__name__)

USER_METADATA_KEY = "x-dialog-user"
CLIENT_METADATA_KEY = "x-dialog-client"
MAX_BATCH = 64
OUTBOX_MAX = 256


@dataclass(frozen=True)
class StreamFailed:
    """The stream ended before the request's final reply."""

    code: grpc.StatusCode
    details: str


Reply = message_pb2.Message | StreamFailed


def _read(base_dir: Path, path: str) -> bytes:
    p = Path(path)
    return (p if p.is_absolute() else base_dir / p).read_bytes()


def channel_options(backend: BackendConfig, max_message_bytes: int) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Reconnect quickly so that retries after a restart find the back-end.
        ("grpc.initial_reconnect_backoff_ms", backend.retry.initial_backoff_ms),
        ("grpc.min_reconnect_backoff_ms", backend.retry.initial_backoff_ms),
        ("grpc.max_reconnect_backoff_ms", max(backend.retry.max_backoff_ms, 1000)),
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 10000),
    ]
    if backend.server_name:
        options.append(("grpc.ssl_target_name_override", backend.server_name))
    return options


class BackendPool:
    """One mutual-TLS channel per named back-end."""

    def __init__(self, routes: RoutesConfig, *, max_message_bytes: int, base_dir: Path):
        self.configs: Mapping[str, BackendConfig] = {b.name: b for b in routes.backends}
        self.channels: dict[str, grpc.aio.Channel] = {}
        for b in routes.backends:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(base_dir, b.ca_file),
                private_key=_read(base_dir, b.key_file),
                certificate_chain=_read(base_dir, b.cert_file),
            )
            self.channels[b.name] = grpc.aio.secure_channel(
                b.target, credentials, options=channel_options(b, max_message_bytes)
            )

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(grace=None)


class BackendStream:
    """One ``Backend.Converse`` call shared by every request of one client connection."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        backend: str,
        user: str,
        *,
        client: str = "",
        reply_queue_max: int,
    ):
        self.backend = backend
        self._reply_queue_max = reply_queue_max
        stub = backend_pb2_grpc.BackendStub(channel)
        metadata = [(USER_METADATA_KEY, user)]
        if client:
            metadata.append((CLIENT_METADATA_KEY, client))
        self._call = stub.Converse(metadata=tuple(metadata))
        self._pending: dict[str, asyncio.Queue[Reply]] = {}
        self._outbox: asyncio.Queue[message_pb2.Message] = asyncio.Queue(OUTBOX_MAX)
        self.failure: StreamFailed | None = None
        self._reader = asyncio.create_task(self._read_loop(), name=f"upstream-read:{backend}")
        self._writer = asyncio.create_task(self._write_loop(), name=f"upstream-write:{backend}")

    @property
    def alive(self) -> bool:
        return self.failure is None

    def submit(self, msg: message_pb2.Message) -> asyncio.Queue[Reply]:
        """Queue ``msg`` for the back-end and return the queue its replies arrive on."""
        if msg.id in self._pending:
            raise InvalidMessage(f"message {msg.id!r} is already in flight")
        if self._outbox.full():
            raise Overloaded("too many messages waiting for this back-end")
        replies: asyncio.Queue[Reply] = asyncio.Queue(self._reply_queue_max)
        if self.failure is not None:
            replies.put_nowait(self.failure)
            return replies
        self._pending[msg.id] = replies
        self._outbox.put_nowait(msg)
        return replies

    def forget(self, msg_id: str) -> None:
        """Stop routing replies for ``msg_id`` (its caller has gone)."""
        self._pending.pop(msg_id, None)

    async def _write_loop(self) -> None:
        try:
            while True:
                batch = [await self._outbox.get()]
                while not self._outbox.empty() and len(batch) < MAX_BATCH:
                    batch.append(self._outbox.get_nowait())
                await self._call.write(backend_pb2.ConverseRequest(messages=batch))
        except grpc.aio.AioRpcError as exc:
            self._fail(exc.code(), exc.details() or "")
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            self._fail(grpc.StatusCode.UNAVAILABLE, "stream closed")

    async def _read_loop(self) -> None:
        try:
            async for response in self._call:
                for reply in response.messages:
                    queue = self._pending.get(reply.context.reply_to)
                    if queue is None:
                        continue
                    if is_final(reply):
                        del self._pending[reply.context.reply_to]
                    await queue.put(reply)
            self._fail(grpc.StatusCode.UNAVAILABLE, "back-end ended the stream")
        except grpc.aio.AioRpcError as exc:
            self._fail(exc.code(), exc.details() or "")

    def _fail(self, code: grpc.StatusCode, details: str) -> None:
        if self.failure is not None:
            return
        self.failure = StreamFailed(code, details)
        log.info("stream to %s failed: %s", self.backend, code.name)
        for queue in self._pending.values():
            # A full queue already holds replies its reader has not taken; it
            # learns of the failure through ``alive`` once it has drained them.
            if not queue.full():
                queue.put_nowait(self.failure)
        self._pending.clear()
        self._call.cancel()

    async def aclose(self) -> None:
        """Cancel the call and its tasks."""
        self._call.cancel()
        for task in (self._reader, self._writer):
            task.cancel()
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)
