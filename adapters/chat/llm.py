"""A hosted language model reached over the OpenAI-compatible streaming API.

``LanguageModel.stream`` posts to ``{LLM_BASE_URL}/v1/chat/completions`` with
``"stream": true`` and yields the text pieces as they arrive. Every failure
(HTTP error status, network error, timeout, malformed stream) becomes
``LlmUnavailable``. The API key is never logged nor shown in ``repr``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import httpx

from adapters.chat.openai_wire import MalformedStream, SseDecoder, parse_event, request_body
from adapters.config import env_int, env_str

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "llama3"
DEFAULT_TIMEOUT_MS = 60_000
COMPLETIONS_PATH = "/v1/chat/completions"
UNAVAILABLE_TEXT = "language model unavailable"


class LlmUnavailable(Exception):
    """The language model gave no complete answer."""


@dataclass(frozen=True)
class LlmConfig:
    """Where the model is and how long a whole answer may take."""

    base_url: str
    model: str = DEFAULT_MODEL
    api_key: str = field(default="", repr=False)
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + COMPLETIONS_PATH

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LlmConfig | None:
        """``LLM_BASE_URL`` (unset: None, the echo assistant), ``LLM_MODEL``
        (llama3), ``LLM_API_KEY`` (none) and ``LLM_TIMEOUT_MS`` (60000)."""
        base_url = env_str(env, "LLM_BASE_URL", "")
        if not base_url:
            return None
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLM_BASE_URL: invalid value {base_url!r} (expected an http(s) URL)")
        return cls(
            base_url=base_url,
            model=env_str(env, "LLM_MODEL", DEFAULT_MODEL),
            api_key=env.get("LLM_API_KEY", "").strip(),
            timeout_ms=env_int(env, "LLM_TIMEOUT_MS", DEFAULT_TIMEOUT_MS, minimum=1),
        )


class LanguageModel:
    """Streams completions; owns no client (the caller closes ``client``)."""

    def __init__(
        self,
        config: LlmConfig,
        client: httpx.AsyncClient,
        *,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._client = client
        self._clock_s = clock_s

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._config.api_key:
            headers["Authorization"] = f"Bearer {self._config.api_key}"
        return headers

    async def stream(self, prompt: str) -> AsyncIterator[str]:
        """Yield the answer to ``prompt`` piece by piece.

        The whole answer must arrive within ``timeout_ms``; each network wait
        has that deadline too. Raises ``LlmUnavailable`` on any failure.
        """
        try:
            async for piece in self._stream(prompt):
                yield piece
        except (httpx.HTTPError, MalformedStream) as exc:
            logger.warning("language model failed: %s", type(exc).__name__)
            raise LlmUnavailable(UNAVAILABLE_TEXT) from exc

    async def _stream(self, prompt: str) -> AsyncIterator[str]:
        # No asyncio.timeout around the yields: it would cancel the consumer.
        # Each wait has httpx's deadline, and the total is checked per line.
        deadline = self._clock_s() + self._config.timeout_s
        body = request_body(self._config.model, prompt)
        timeout = httpx.Timeout(self._config.timeout_s)
        request = self._client.stream(
            "POST", self._config.url, json=body, headers=self._headers(), timeout=timeout
        )
        async with request as response:
            if response.status_code != httpx.codes.OK:
                logger.warning("language model answered HTTP %d", response.status_code)
                raise LlmUnavailable(UNAVAILABLE_TEXT)
            decoder = SseDecoder()
            async for line in response.aiter_lines():
                if self._clock_s() > deadline:
                    logger.warning("language model answer exceeded %d ms", self._config.timeout_ms)
                    raise LlmUnavailable(UNAVAILABLE_TEXT)
                data = decoder.feed(line)
                if data is None:
                    continue
                chunk = parse_event(data)
                if chunk.text:
                    yield chunk.text
                if chunk.finished:
                    return
        raise MalformedStream("the stream ended before [DONE]")
