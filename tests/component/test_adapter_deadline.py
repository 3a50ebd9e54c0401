"""The gateway's deadline in ``ConverseRequest.timeouts`` stops the adapters' work, over
real gRPC with mutual TLS: the shared base cancels the handler and answers
``deadline exceeded``, and the chat adapter stops its language-model call."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx

from adapters.base import ConverseServicer, Message, reply
from adapters.chat.llm import LanguageModel, LlmConfig
from adapters.chat.server import ChatServicer, chat_limits
from adapters.config import AdapterConfig
from dialog.backend.v1 import backend_pb2
from tests.fakes.openai_server import FakeOpenAI, Script

DEADLINE_TEXT = "deadline exceeded"


class StallsOnce(ConverseServicer):
    """The first delivery of each id sends a delta and never ends; later ones answer."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: Counter[str] = Counter()
        self.cancelled: set[str] = set()

    async def handle(self, msg: Message, user: str) -> AsyncIterator[Message]:
        self.runs[msg.id] += 1
        if self.runs[msg.id] == 1:
            yield reply("delta", "working")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.add(msg.id)
                raise
        yield reply("text", "done")


def request(msg: Message, time_left: timedelta | None) -> backend_pb2.ConverseRequest:
    req = backend_pb2.ConverseRequest(messages=[msg])
    if time_left is not None:
        req.timeouts[msg.id].FromTimedelta(time_left)
    return req


async def ask(session: Any, msg: Message, time_left: timedelta | None) -> list[Message]:
    await session.call.write(request(msg, time_left))
    return list((await session.until_final([msg.id]))[msg.id])


async def test_a_handler_past_the_deadline_is_stopped_and_a_redelivery_runs_again(
    adapter_runner, mesh_channel, converse, make_message, final_of
) -> None:
    servicer = StallsOnce()
    server = await adapter_runner(servicer, "chat")
    session = converse(mesh_channel(server.port, "chat"), "alice")
    msg = make_message("m1", "text", "hi")

    replies = await ask(session, msg, timedelta(milliseconds=200))
    assert [m.content.text for m in replies if m.content.type == "delta"] == ["working"]
    final = final_of(replies)
    assert (final.content.type, final.content.text) == ("error", DEADLINE_TEXT)
    assert servicer.cancelled == {"m1"}

    # The answer cut by the deadline is not remembered: the same id runs again.
    final = final_of(await ask(session, msg, timedelta(seconds=10)))
    assert (final.content.type, final.content.text) == ("text", "done")
    assert servicer.runs["m1"] == 2


async def test_a_message_with_no_time_left_is_not_started(
    adapter_runner, mesh_channel, converse, make_message, final_of
) -> None:
    servicer = StallsOnce()
    server = await adapter_runner(servicer, "chat")
    session = converse(mesh_channel(server.port, "chat"), "alice")
    replies = await ask(session, make_message("m1", "text", "hi"), timedelta(0))
    assert (final_of(replies).content.type, replies[-1].content.text) == ("error", DEADLINE_TEXT)
    assert servicer.runs["m1"] == 0


async def test_a_message_without_a_deadline_runs_to_the_end(
    adapter_runner, mesh_channel, converse, make_message, final_of
) -> None:
    servicer = StallsOnce()
    servicer.runs["m1"] = 1  # already past the stalling first run
    server = await adapter_runner(servicer, "chat")
    session = converse(mesh_channel(server.port, "chat"), "alice")
    final = final_of(await ask(session, make_message("m1", "text", "hi"), None))
    assert (final.content.type, final.content.text) == ("text", "done")


async def test_the_chat_adapter_stops_its_model_call_at_the_deadline(
    adapter_runner, mesh_channel, converse, make_message, final_of
) -> None:
    # The model stalls far longer than the deadline, and LLM_TIMEOUT_MS (60 s by default)
    # is not what ends the call: the gateway's deadline is.
    with FakeOpenAI(Script(pieces=["slow", "er"], stall_after_first_s=5.0)) as fake:
        async with httpx.AsyncClient() as client:
            llm_config = LlmConfig.from_env({"LLM_BASE_URL": fake.base_url})
            assert llm_config is not None
            limits = chat_limits(AdapterConfig(name="chat"), llm_config)
            servicer = ChatServicer(LanguageModel(llm_config, client), limits)
            server = await adapter_runner(servicer, "chat")
            session = converse(mesh_channel(server.port, "chat"), "alice")
            replies = await ask(
                session, make_message("m1", "text", "Hi"), timedelta(milliseconds=300)
            )
    assert [m.content.text for m in replies if m.content.type == "delta"] == ["slow"]
    final = final_of(replies)
    assert (final.content.type, final.content.text) == ("error", DEADLINE_TEXT)
