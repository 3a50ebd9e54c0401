"""``dialog.v1.Gateway`` over native gRPC: translation only, the work is in ``DialogService``.

Each call has its span, a child of the ``traceparent`` in its metadata; a ``Converse``
message with a ``traceparent`` label has its own parent (``gateway.conversation``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

from opentelemetry.trace import Span

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from gateway import metrics, spans, tracing
from gateway.auth import Identity
from gateway.conversation import Conversation
from gateway.errors import DialogError, Internal
from gateway.grpc.errors import Context, abort
from gateway.grpc.expiry import until_expiry
from gateway.grpc.peer import client_cert_identity
from gateway.service import DialogService
from gateway.translate import make_ack, validate_client_message

log = logging.getLogger(__name__)
SURFACE = "grpc"


def _expiry(service: DialogService, identity: Identity) -> float:
    """When the identity's token expires, in event-loop time."""
    return asyncio.get_running_loop().time() + service.access.remaining_s(identity)


async def _queued(
    queue: asyncio.Queue[message_pb2.Message | None],
) -> AsyncIterator[message_pb2.Message]:
    while (msg := await queue.get()) is not None:
        yield msg


def _authorization(context: Context) -> list[str]:
    return [str(v) for k, v in context.invocation_metadata() or () if k == "authorization"]


def _span(service: DialogService, method: str, context: Context) -> Span:
    metadata = context.invocation_metadata()
    return spans.grpc_server_span(service.tracer, method, metadata, context.peer())


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """Send, Converse and Subscribe for native gRPC clients."""

    def __init__(self, service: DialogService):
        self._service = service

    async def _identity(self, context: Context) -> Identity:
        """The token's identity, with the verified client certificate's when there is one."""
        identity = await self._service.access.authenticate(_authorization(context), SURFACE)
        client = client_cert_identity(context)
        return dataclasses.replace(identity, client=client) if client else identity

    async def Send(
        self, request: gateway_pb2.SendRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.SendResponse]:
        started, code = time.monotonic(), "OK"
        span = _span(self._service, "Send", context)
        try:
            identity = await self._identity(context)
            validate_client_message(request.message)
            tracing.take_from_labels(request.message)  # the metadata carries the call's
            with tracing.current(span):
                admission = await self._service.messages.admit(identity, request.message, SURFACE)
            ack = make_ack(admission.stored, replay=admission.replay is not None)
            yield gateway_pb2.SendResponse(message=ack)
            async with self._service.request_upstreams(identity) as upstreams:
                replies = self._service.messages.replies(upstreams, identity, admission)
                async for reply in until_expiry(replies, _expiry(self._service, identity)):
                    yield gateway_pb2.SendResponse(message=reply)
        except DialogError as exc:
            code = exc.grpc_status
            await abort(context, exc)
        finally:
            _observe("Send", code, started, span)

    async def Converse(
        self,
        request_iterator: AsyncIterator[gateway_pb2.ConverseRequest],
        context: Context,
    ) -> AsyncIterator[gateway_pb2.ConverseResponse]:
        started, code = time.monotonic(), "OK"
        span = _span(self._service, "Converse", context)
        try:
            identity = await self._identity(context)
        except DialogError as exc:
            _observe("Converse", exc.grpc_status, started, span)
            await abort(context, exc)
            return
        outbox: asyncio.Queue[message_pb2.Message | None] = asyncio.Queue(
            self._service.config.outbound_queue_max
        )
        with tracing.current(span):  # the parent of its messages' spans
            pump = asyncio.create_task(
                self._pump(identity, request_iterator, outbox), name="converse-requests"
            )
        try:
            async for msg in until_expiry(_queued(outbox), _expiry(self._service, identity)):
                yield gateway_pb2.ConverseResponse(message=msg)
            await pump
        except DialogError as exc:
            code = exc.grpc_status
            await abort(context, exc)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            _observe("Converse", code, started, span)

    async def _pump(
        self,
        identity: Identity,
        requests: AsyncIterator[gateway_pb2.ConverseRequest],
        outbox: asyncio.Queue[message_pb2.Message | None],
    ) -> None:
        try:
            async with Conversation(self._service, identity, SURFACE, outbox.put) as conv:
                async for request in requests:
                    try:
                        validate_client_message(request.message)
                    except DialogError as exc:
                        await conv.fail(exc, request.message.id)
                        continue
                    await conv.submit(request.message)
                await conv.drain()
        except Exception:
            log.exception("converse stream failed")
            raise Internal() from None
        finally:
            await outbox.put(None)

    async def Subscribe(
        self, request: gateway_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.SubscribeResponse]:
        started, code = time.monotonic(), "OK"
        span = _span(self._service, "Subscribe", context)
        try:
            identity = await self._identity(context)
            sub = await self._service.subscribe(identity, request.after_seq)
            try:
                # Headers now, so the client knows the subscription is live.
                await context.send_initial_metadata(())
                async for msg in until_expiry(aiter(sub), _expiry(self._service, identity)):
                    yield gateway_pb2.SubscribeResponse(message=msg)
            finally:
                self._service.unsubscribe(identity, sub)
        except DialogError as exc:
            code = exc.grpc_status
            await abort(context, exc)
        finally:
            _observe("Subscribe", code, started, span)


def _observe(method: str, code: str, started: float, span: Span) -> None:
    """Count the call's duration and end its span."""
    metrics.REQUEST_SECONDS.labels(surface=SURFACE, method=method, code=code).observe(
        time.monotonic() - started, exemplar=tracing.exemplar(span)
    )
    spans.end_rpc(span, code)
