"""Configuration shared by every adapter process (pure, no I/O).

Each adapter reads its settings from an environment mapping that the caller
passes in; nothing here reads ``os.environ``. Every invalid value raises
``ValueError`` with one line that names the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
CHAT_DEFAULT_PORT = 50061
TASKS_DEFAULT_PORT = 50062


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0,
            maximum: int | None = None) -> int:
    """Read an integer variable, or fail with one line naming it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}: invalid value {raw!r} (expected an integer)") from None
    if value < minimum:
        raise ValueError(f"{name}: invalid value {raw!r} (expected at least {minimum})")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: invalid value {raw!r} (expected at most {maximum})")
    return value


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    """Read a string variable; an empty value means the default."""
    raw = env.get(name, "").strip()
    return raw or default


@dataclass(frozen=True)
class AdapterConfig:
    """Where an adapter listens and which mesh credentials it presents."""

    name: str
    host: str = DEFAULT_HOST
    port: int = 0
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = "certs/ca.pem"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    @property
    def env_prefix(self) -> str:
        """The prefix of this adapter's own variables (``CHAT`` for ``chat``)."""
        return self.name.upper().replace("-", "_")

    @property
    def address(self) -> str:
        """``host:port`` in the form gRPC binds (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_env(cls, name: str, env: Mapping[str, str], default_port: int) -> AdapterConfig:
        """Build the configuration of adapter ``name`` from ``env``.

        Variables: ``{NAME}_HOST`` (127.0.0.1), ``{NAME}_PORT`` (``default_port``),
        ``{NAME}_CERT_FILE`` (certs/{name}.pem), ``{NAME}_KEY_FILE``
        (certs/{name}-key.pem), ``MESH_CA_FILE`` (certs/ca.pem) and
        ``MAX_MESSAGE_BYTES`` (1048576).
        """
        prefix = name.upper().replace("-", "_")
        return cls(
            name=name,
            host=env_str(env, f"{prefix}_HOST", DEFAULT_HOST),
            port=env_int(env, f"{prefix}_PORT", default_port, maximum=65535),
            cert_file=env_str(env, f"{prefix}_CERT_FILE", f"certs/{name}.pem"),
            key_file=env_str(env, f"{prefix}_KEY_FILE", f"certs/{name}-key.pem"),
            ca_file=env_str(env, "MESH_CA_FILE", "certs/ca.pem"),
            max_message_bytes=env_int(
                env, "MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, minimum=1024
            ),
        )
