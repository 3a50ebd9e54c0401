"""Replay the steps of a contract example against a running stack, and say what was observed.

An example is a JSON file (see README.md in this folder): ``steps``, each with one request
(``http``, ``ws`` or ``grpc``) and the ``expect``-ed observation. ``replay`` returns the
observations in the same shape, not yet normalised. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from google.protobuf import json_format
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.stack import Stack

SUBPROTOCOL = "dialog.v1.json"
WAIT_S = 15.0
# Response headers that are part of the contract (recorded when present).
CONTRACT_HEADERS = (
    "content-type",
    "www-authenticate",
    "retry-after",
    "idempotent-replayed",
    "cache-control",
)
# gRPC trailers that are part of the contract (recorded when present).
CONTRACT_TRAILERS = ("retry-after", "x-dialog-expected-seq")
GARBAGE_TOKEN = "not-a-jwt"
NOT_FINAL = ("ack", "delta")

Step = dict[str, Any]
Observation = dict[str, Any]


@dataclass(frozen=True)
class Caller:
    """The example's user: one per example, so that seqs, entities and ids start afresh."""

    stack: Stack
    token: str

    def authorization(self, auth: str) -> str | None:
        """The ``Authorization`` value for a step's ``auth``: bearer (default), garbage, none."""
        if auth == "bearer":
            return f"Bearer {self.token}"
        if auth == "garbage":
            return f"Bearer {GARBAGE_TOKEN}"
        if auth == "none":
            return None
        raise ValueError(f"unknown auth {auth!r}: use bearer, garbage or none")

    def fill(self, value: Any) -> Any:
        """``value`` with every ``$TOKEN`` replaced by the user's token."""
        if isinstance(value, str):
            return value.replace("$TOKEN", self.token)
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value


async def replay(caller: Caller, steps: list[Step]) -> list[Observation]:
    """What each step observed, in order."""
    return [await replay_step(caller, step) for step in steps]


async def replay_step(caller: Caller, step: Step) -> Observation:
    kinds = [k for k in ("http", "ws", "grpc") if k in step]
    if len(kinds) != 1:
        raise ValueError(f"a step has exactly one of http, ws, grpc: {sorted(step)}")
    driver: Callable[[Caller, dict[str, Any]], Awaitable[Observation]] = {
        "http": replay_http,
        "ws": replay_ws,
        "grpc": replay_grpc,
    }[kinds[0]]
    async with asyncio.timeout(WAIT_S * 4):
        return await driver(caller, caller.fill(step[kinds[0]]))


# --- HTTP and server-sent events -------------------------------------------------------------


async def replay_http(caller: Caller, request: dict[str, Any]) -> Observation:
    """One HTTP request. A server-sent event stream is read to its end, or, with ``read``, for
    that many events after the ``while_open`` steps ran (for ``GET /events/stream``)."""
    headers = dict(request.get("headers", {}))
    authorization = caller.authorization(request.get("auth", "bearer"))
    if authorization:
        headers["Authorization"] = authorization
    body: dict[str, Any] = {}
    if "json" in request:
        body["json"] = request["json"]
    elif "body" in request:
        body["content"] = request["body"].encode()
    stack = caller.stack
    async with (
        httpx.AsyncClient(base_url=stack.base_url, verify=stack.ssl_context(), timeout=WAIT_S) as c,
        c.stream(request.get("method", "GET"), request["path"], headers=headers, **body) as r,
    ):
        observed: Observation = {"status": r.status_code, "headers": contract_headers(r.headers)}
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            await r.aread()
            observed.update(http_body(r))
            return observed
        lines = r.aiter_lines()
        if "while_open" in request:
            observed["while_open"] = await replay(caller, request["while_open"])
        observed["events"] = [e async for e in sse_events(lines, request.get("read"))]
        return observed


def contract_headers(headers: httpx.Headers) -> dict[str, str]:
    return {name: headers[name] for name in CONTRACT_HEADERS if name in headers}


def http_body(r: httpx.Response) -> dict[str, Any]:
    if r.headers.get("content-type", "").startswith("application/json"):
        return {"json": r.json()}
    return {"text": r.text} if r.text else {}


async def sse_events(lines: AsyncIterator[str], count: int | None) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events (comments skipped), ``data`` parsed as JSON; ``count`` of them, or all
    until the stream ends."""
    seen = 0
    event: dict[str, Any] = {}
    while count is None or seen < count:
        try:
            line = await asyncio.wait_for(anext(lines), WAIT_S)
        except StopAsyncIteration:
            return
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[name] = f"{event[name]}\n{value}" if name in event else value
        elif event:
            if "data" in event:
                event["data"] = json.loads(event["data"])
            yield event
            seen += 1
            event = {}


# --- WebSocket -------------------------------------------------------------------------------


async def replay_ws(caller: Caller, request: dict[str, Any]) -> Observation:
    """Connect to ``/ws`` (offering the subprotocol), then for each ``script`` entry send its
    frame and read frames ``until``: ``final`` (default: up to a final reply or an error),
    ``close``, or a count. A refused handshake records the HTTP answer."""
    authorization = caller.authorization(request.get("auth", "bearer"))
    stack = caller.stack
    try:
        async with connect(
            stack.ws_url + request.get("query", ""),
            ssl=stack.ssl_context(),
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            additional_headers={"Authorization": authorization} if authorization else None,
            open_timeout=WAIT_S,
        ) as ws:
            observed: Observation = {"subprotocol": ws.subprotocol, "frames": []}
            for entry in request.get("script", []):
                frame = entry["send"]
                if frame is not None:
                    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
                frames, close = await ws_frames(ws, entry.get("until", "final"))
                observed["frames"].append(frames)
                if close is not None:
                    observed["close"] = close
                    break
            return observed
    except InvalidStatus as exc:
        response = exc.response
        refused: Observation = {"status": response.status_code}
        refused["headers"] = {
            name: response.headers[name] for name in CONTRACT_HEADERS if name in response.headers
        }
        if refused["headers"].get("content-type", "").startswith("application/json"):
            refused["json"] = json.loads(response.body or b"null")
        return refused


async def ws_frames(
    ws: ClientConnection, until: str | int
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Frames read ``until`` the condition holds, and the close (code, reason) if it came."""
    frames: list[dict[str, Any]] = []
    while until != len(frames):
        try:
            raw = await asyncio.wait_for(ws.recv(), WAIT_S)
        except ConnectionClosed as exc:
            if exc.rcvd is None:  # the connection dropped without a close frame
                return frames, {"code": None, "reason": ""}
            return frames, {"code": exc.rcvd.code, "reason": exc.rcvd.reason}
        frame = json.loads(raw)
        frames.append(frame)
        if until == "final" and is_final(frame):
            break
    return frames, None


def is_final(frame: dict[str, Any]) -> bool:
    """A final reply or an error: what ends the answer to one message (in JSON form)."""
    content = frame.get("content", {})
    return content.get("type") not in NOT_FINAL and frame.get("role") != "event"


# --- gRPC ------------------------------------------------------------------------------------


@asynccontextmanager
async def grpc_stub(stack: Stack) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    creds = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with grpc.aio.secure_channel(stack.grpc_target, creds) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


async def replay_grpc(caller: Caller, request: dict[str, Any]) -> Observation:
    """One call of ``dialog.v1.Gateway``; requests and responses in canonical proto JSON."""
    authorization = caller.authorization(request.get("auth", "bearer"))
    metadata = (("authorization", authorization),) if authorization else ()
    method = request["method"]
    async with grpc_stub(caller.stack) as stub:
        if method == "Send":
            send = json_format.ParseDict(request["request"], gateway_pb2.SendRequest())
            return await grpc_outcome(stub.Send(send, metadata=metadata), [])
        if method == "Converse":
            return await converse(stub, metadata, request["requests"])
        if method == "Subscribe":
            return await subscribe(caller, stub, metadata, request)
    raise ValueError(f"unknown method {method!r}: use Send, Converse or Subscribe")


async def grpc_outcome(call: Any, responses: list[dict[str, Any]]) -> Observation:
    """Read ``call`` to its end; its responses (after ``responses``) and its status."""
    try:
        while (response := await asyncio.wait_for(call.read(), WAIT_S)) is not grpc.aio.EOF:
            responses.append(json_format.MessageToDict(response))
    except grpc.aio.AioRpcError:
        pass  # the status is read below, as for a call that ended OK
    trailers = dict(await call.trailing_metadata() or ())
    code = await call.code()
    return {
        "responses": responses,
        "status": {
            "code": code.name,
            "details": await call.details() or "",
            "trailers": {k: trailers[k] for k in CONTRACT_TRAILERS if k in trailers},
        },
    }


async def converse(
    stub: gateway_pb2_grpc.GatewayStub, metadata: Any, requests: list[dict[str, Any]]
) -> Observation:
    """Write each request and read up to its final reply, then end the stream."""
    call = stub.Converse(metadata=metadata)
    responses: list[dict[str, Any]] = []
    for body in requests:
        await call.write(json_format.ParseDict(body, gateway_pb2.ConverseRequest()))
        while True:
            response = await asyncio.wait_for(call.read(), WAIT_S)
            if response is grpc.aio.EOF:
                return await grpc_outcome(call, responses)
            responses.append(json_format.MessageToDict(response))
            if is_final_message(response.message):
                break
    await call.done_writing()
    return await grpc_outcome(call, responses)


def is_final_message(message: message_pb2.Message) -> bool:
    return message.content.type not in NOT_FINAL and message.role != message_pb2.ROLE_EVENT


async def subscribe(
    caller: Caller, stub: gateway_pb2_grpc.GatewayStub, metadata: Any, request: dict[str, Any]
) -> Observation:
    """Subscribe, run the ``while_open`` steps once the subscription is live, then read
    ``read`` messages; an error status instead is recorded as such."""
    body = json_format.ParseDict(request.get("request", {}), gateway_pb2.SubscribeRequest())
    call = stub.Subscribe(body, metadata=metadata)
    try:
        await asyncio.wait_for(call.wait_for_connection(), WAIT_S)
    except grpc.aio.AioRpcError:
        return await grpc_outcome(call, [])
    observed: Observation = {}
    if "while_open" in request:
        observed["while_open"] = await replay(caller, request["while_open"])
    responses: list[dict[str, Any]] = []
    try:
        for _ in range(request["read"]):
            response = await asyncio.wait_for(call.read(), WAIT_S)
            if response is grpc.aio.EOF:
                return {**observed, **await grpc_outcome(call, responses)}
            responses.append(json_format.MessageToDict(response))
    except grpc.aio.AioRpcError:
        return {**observed, **await grpc_outcome(call, responses)}
    call.cancel()
    return {**observed, "responses": responses}
