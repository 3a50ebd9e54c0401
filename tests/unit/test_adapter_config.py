"""Adapter configuration from an environment mapping."""

from __future__ import annotations

import pytest

from adapters.chat.llm import LlmConfig
from adapters.config import CHAT_DEFAULT_PORT, TASKS_DEFAULT_PORT, AdapterConfig


def test_defaults() -> None:
    config = AdapterConfig.from_env("chat", {}, CHAT_DEFAULT_PORT)
    assert config == AdapterConfig(
        name="chat",
        host="127.0.0.1",
        port=50061,
        cert_file="certs/chat.pem",
        key_file="certs/chat-key.pem",
        ca_file="certs/ca.pem",
        max_message_bytes=1048576,
    )
    assert TASKS_DEFAULT_PORT == 50062
    assert config.address == "127.0.0.1:50061"


def test_overrides() -> None:
    env = {
        "TASKS_HOST": "::1",
        "TASKS_PORT": "6000",
        "TASKS_CERT_FILE": "/c.pem",
        "TASKS_KEY_FILE": "/k.pem",
        "MESH_CA_FILE": "/ca.pem",
        "MAX_MESSAGE_BYTES": "2048",
        "CHAT_PORT": "1",  # another adapter's variable is ignored
    }
    config = AdapterConfig.from_env("tasks", env, TASKS_DEFAULT_PORT)
    assert (config.host, config.port, config.address) == ("::1", 6000, "[::1]:6000")
    assert (config.cert_file, config.key_file, config.ca_file) == ("/c.pem", "/k.pem", "/ca.pem")
    assert config.max_message_bytes == 2048


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CHAT_PORT": "eighty"}, "CHAT_PORT"),
        ({"CHAT_PORT": "70000"}, "CHAT_PORT"),
        ({"CHAT_PORT": "-1"}, "CHAT_PORT"),
        ({"MAX_MESSAGE_BYTES": "0"}, "MAX_MESSAGE_BYTES"),
        ({"MAX_MESSAGE_BYTES": "1e6"}, "MAX_MESSAGE_BYTES"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError) as caught:
        AdapterConfig.from_env("chat", env, CHAT_DEFAULT_PORT)
    message = str(caught.value)
    assert message.startswith(f"{variable}: invalid value")
    assert "\n" not in message


def test_llm_is_off_without_a_base_url() -> None:
    assert LlmConfig.from_env({}) is None
    assert LlmConfig.from_env({"LLM_BASE_URL": "  "}) is None


def test_llm_settings() -> None:
    config = LlmConfig.from_env(
        {
            "LLM_BASE_URL": "https://llm.example/",
            "LLM_MODEL": "gpt-x",
            "LLM_API_KEY": "sk-secret",
            "LLM_TIMEOUT_MS": "1500",
        }
    )
    assert config is not None
    assert config.url == "https://llm.example/v1/chat/completions"
    assert (config.model, config.api_key, config.timeout_s) == ("gpt-x", "sk-secret", 1.5)
    assert "sk-secret" not in repr(config)
    defaults = LlmConfig.from_env({"LLM_BASE_URL": "http://127.0.0.1:11434"})
    assert defaults is not None
    assert (defaults.model, defaults.api_key, defaults.timeout_ms) == ("llama3", "", 60000)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"LLM_BASE_URL": "llm.example"}, "LLM_BASE_URL"),
        ({"LLM_BASE_URL": "http://x", "LLM_TIMEOUT_MS": "0"}, "LLM_TIMEOUT_MS"),
        ({"LLM_BASE_URL": "http://x", "LLM_TIMEOUT_MS": "soon"}, "LLM_TIMEOUT_MS"),
    ],
)
def test_invalid_llm_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError, match=f"^{variable}: invalid value"):
        LlmConfig.from_env(env)
