"""The chat adapter process: the Backend servicer and ``run``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import httpx

from adapters.base import (
    CHAT_DEFAULT_PORT,
    AdapterConfig,
    ConverseLimits,
    ConverseServicer,
    Message,
    error_reply,
    reply,
    serve,
)
from adapters.chat.echo import echo_replies
from adapters.chat.llm import LanguageModel, LlmConfig, LlmUnavailable
from adapters.envelope import DELTA, TEXT

NO_TEXT = "message has no text"
# The handler deadline must leave the model its own deadline, and a margin.
HANDLE_MARGIN_S = 5.0


class ChatServicer(ConverseServicer):
    """Answers text: from the language model if one is configured, else by echo."""

    def __init__(self, llm: LanguageModel | None = None, limits: ConverseLimits | None = None):
        super().__init__(limits)
        self._llm = llm

    async def handle(self, msg: Message, user: str) -> AsyncIterator[Message]:
        text = msg.content.text
        if not text.strip():
            yield error_reply(NO_TEXT)
            return
        if self._llm is None:
            for out in echo_replies(text):
                yield out
            return
        pieces: list[str] = []
        try:
            async for piece in self._llm.stream(text):
                pieces.append(piece)
                yield reply(DELTA, piece)
        except LlmUnavailable as exc:
            yield error_reply(str(exc))
            return
        yield reply(TEXT, "".join(pieces))


def chat_limits(config: AdapterConfig, llm: LlmConfig | None) -> ConverseLimits:
    """Limits for the chat servicer: the handler outlives the model's own deadline."""
    defaults = ConverseLimits()
    handle_s = defaults.handle_timeout_s
    if llm is not None:
        handle_s = max(handle_s, llm.timeout_s + HANDLE_MARGIN_S)
    return ConverseLimits(max_message_bytes=config.max_message_bytes, handle_timeout_s=handle_s)


async def run(env: Mapping[str, str]) -> None:
    """Run the chat adapter until SIGTERM or SIGINT.

    Reads ``CHAT_HOST``, ``CHAT_PORT`` (50061), ``CHAT_CERT_FILE``,
    ``CHAT_KEY_FILE``, ``MESH_CA_FILE``, ``MAX_MESSAGE_BYTES`` and the ``LLM_*``
    variables from ``env``. Raises ``ValueError`` naming a bad variable.
    """
    config = AdapterConfig.from_env("chat", env, CHAT_DEFAULT_PORT)
    llm_config = LlmConfig.from_env(env)
    async with contextlib.AsyncExitStack() as stack:
        llm = None
        if llm_config is not None:
            client = await stack.enter_async_context(httpx.AsyncClient())
            llm = LanguageModel(llm_config, client)
        await serve(ChatServicer(llm, chat_limits(config, llm_config)), config)
