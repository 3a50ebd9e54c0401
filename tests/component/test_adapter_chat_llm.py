"""The chat adapter in LLM mode, over real gRPC with mutual TLS, against a
real HTTP server that speaks the OpenAI streaming wire format."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.chat.llm import LanguageModel, LlmConfig
from adapters.chat.server import ChatServicer, chat_limits
from adapters.config import AdapterConfig
from tests.fakes.openai_server import FakeOpenAI, Script, unused_base_url

API_KEY = "sk-test-secret-key-0123456789"


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def chat_with_llm(adapter_runner, mesh_channel, http_client):
    """``await chat_with_llm(base_url, **env) -> channel`` to a chat adapter using that LLM."""

    async def open_chat(base_url: str, **env: str):
        llm_config = LlmConfig.from_env({"LLM_BASE_URL": base_url, **env})
        assert llm_config is not None
        limits = chat_limits(AdapterConfig(name="chat"), llm_config)
        servicer = ChatServicer(LanguageModel(llm_config, http_client), limits)
        server = await adapter_runner(servicer, "chat")
        return mesh_channel(server.port, "chat")

    return open_chat


async def test_streams_model_deltas_then_the_full_text(
    chat_with_llm, converse, make_message, final_of
) -> None:
    with FakeOpenAI(Script(pieces=["Hel", "lo", ", ", "world"])) as fake:
        channel = await chat_with_llm(fake.base_url, LLM_MODEL="tiny", LLM_API_KEY=API_KEY)
        replies = (await converse(channel, "alice").ask(make_message("m1", "text", "Hi?")))["m1"]

    assert [m.content.text for m in replies if m.content.type == "delta"] == [
        "Hel",
        "lo",
        ", ",
        "world",
    ]
    final = final_of(replies)
    assert (final.content.type, final.content.text) == ("text", "Hello, world")
    assert all(m.context.reply_to == "m1" for m in replies)
    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.body == {
        "model": "tiny",
        "stream": True,
        "messages": [{"role": "user", "content": "Hi?"}],
    }


async def test_default_model_and_no_key(chat_with_llm, converse, make_message) -> None:
    with FakeOpenAI() as fake:
        channel = await chat_with_llm(fake.base_url)
        await converse(channel, "alice").ask(make_message("m1", "text", "Hi"))
    [request] = fake.requests
    assert request.body["model"] == "llama3"
    assert "authorization" not in request.headers


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(Script(status=500), id="http-500"),
        pytest.param(Script(status=401), id="http-401"),
        pytest.param(Script(malformed_after=1), id="malformed-chunk"),
        pytest.param(Script(cut_before_done=True), id="cut-before-done"),
    ],
)
async def test_model_failure_gives_a_safe_error_final(
    script, chat_with_llm, converse, make_message, final_of
) -> None:
    with FakeOpenAI(script) as fake:
        channel = await chat_with_llm(fake.base_url)
        replies = (await converse(channel, "alice").ask(make_message("m1", "text", "Hi")))["m1"]
    final = final_of(replies)
    assert (final.content.type, final.content.text) == ("error", "language model unavailable")
    assert len(fake.requests) == 1


async def test_model_that_is_down_gives_an_error_final(
    chat_with_llm, converse, make_message, final_of
) -> None:
    channel = await chat_with_llm(unused_base_url())
    replies = (await converse(channel, "alice").ask(make_message("m1", "text", "Hi")))["m1"]
    final = final_of(replies)
    assert (final.content.type, final.content.text) == ("error", "language model unavailable")
    assert len(replies) == 1


async def test_model_that_stalls_times_out_with_an_error_final(
    chat_with_llm, converse, make_message, final_of
) -> None:
    with FakeOpenAI(Script(pieces=["slow", "er"], stall_after_first_s=5.0)) as fake:
        channel = await chat_with_llm(fake.base_url, LLM_TIMEOUT_MS="300")
        replies = (await converse(channel, "alice").ask(make_message("m1", "text", "Hi")))["m1"]
    assert [m.content.text for m in replies if m.content.type == "delta"] == ["slow"]
    final = final_of(replies)
    assert (final.content.type, final.content.text) == ("error", "language model unavailable")


async def test_the_api_key_is_never_logged(
    chat_with_llm, converse, make_message, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(Script(status=500)) as failing, FakeOpenAI() as working:
        for base_url in (failing.base_url, working.base_url):
            channel = await chat_with_llm(base_url, LLM_API_KEY=API_KEY)
            await converse(channel, "alice").ask(make_message("m1", "text", "Hi"))
    assert caplog.records, "the test needs log records to inspect"
    assert any("language model" in r.getMessage() for r in caplog.records)
    assert API_KEY not in caplog.text
    config = LlmConfig.from_env({"LLM_BASE_URL": "http://x", "LLM_API_KEY": API_KEY})
    assert API_KEY not in repr(config)
