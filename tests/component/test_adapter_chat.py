"""The chat adapter's echo assistant over real gRPC with mutual TLS."""

from __future__ import annotations

import pytest

from adapters.chat.server import ChatServicer


@pytest.fixture
async def chat(adapter_runner, mesh_channel):
    server = await adapter_runner(ChatServicer(), "chat")
    return mesh_channel(server.port, "chat")


async def test_echo_streams_words_then_the_full_text(
    chat, converse, make_message, final_of
) -> None:
    replies = await converse(chat, "alice").ask(make_message("m1", "text", "hello  brave world"))
    messages = replies["m1"]
    deltas = [m.content.text for m in messages if m.content.type == "delta"]
    final = final_of(messages)

    assert deltas == ["hello  ", "brave ", "world"]
    assert (final.content.type, final.content.text) == ("text", "hello  brave world")
    assert all(m.context.reply_to == "m1" for m in messages)


async def test_each_message_of_a_batch_gets_its_own_answer(
    chat, converse, make_message, final_of
) -> None:
    texts = {f"b{i}": f"message number {i}" for i in range(20)}
    batch = [make_message(msg_id, "text", text) for msg_id, text in texts.items()]
    replies = await converse(chat, "alice").ask(*batch)

    assert set(replies) == set(texts)
    for msg_id, text in texts.items():
        deltas = "".join(m.content.text for m in replies[msg_id] if m.content.type == "delta")
        assert deltas == text
        assert final_of(replies[msg_id]).content.text == text


async def test_message_without_text_gets_an_error(chat, converse, make_message, final_of) -> None:
    replies = (await converse(chat, "alice").ask(make_message("e1", "text", "   ")))["e1"]
    final = final_of(replies)
    assert (final.content.type, final.content.text) == ("error", "message has no text")
    assert len(replies) == 1


async def test_repeated_message_is_answered_once(chat, converse, make_message) -> None:
    session = converse(chat, "alice")
    first = (await session.ask(make_message("r1", "text", "one two")))["r1"]
    again = (await session.ask(make_message("r1", "text", "one two")))["r1"]
    assert [m.content.type for m in first] == ["delta", "delta", "text"]
    assert again == [first[-1]]
