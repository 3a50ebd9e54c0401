"""TLS on the public ports: one posture, client certificates, and reloading without a restart.

Posture (both ports): TLS 1.2 and 1.3 only, AEAD cipher suites only.

- HTTPS/WebSocket (uvicorn): the gateway builds the ``ssl.SSLContext`` itself and hands it to
  uvicorn through ``uvicorn.Config(ssl_context_factory=...)``. TLS 1.2 is limited to
  ``TLS12_CIPHERS`` (ECDHE with AES-GCM or ChaCha20-Poly1305); every TLS 1.3 suite is AEAD
  (RFC 8446, section 9.1) and OpenSSL enables no other by default.
- gRPC: grpc core's own defaults already are TLS 1.2 to 1.3, with ECDHE-AES-GCM suites only on
  TLS 1.2. grpcio has no cipher option (only the process-wide ``GRPC_SSL_CIPHER_SUITES``
  variable, which would also apply to the back-end channels), so the gateway relies on those
  defaults, and tests/e2e/test_tls_posture.py checks them.

Reload: ``PublicTls.reload`` reads the files again and builds new contexts; a failure keeps the
current ones. New handshakes then use the new certificate; open connections are untouched.

- uvicorn: the listening context's SNI callback, which OpenSSL runs on every ClientHello (with
  ``None`` when the client sent no name), moves the connection to the current context.
- gRPC: ``grpc.dynamic_ssl_server_credentials`` asks ``_fetch_grpc_config`` before each
  handshake, from a grpc core thread; it returns a new configuration once after a reload.

Client certificates (``CLIENT_CERT_MODE``): ``required`` refuses a handshake without a
certificate from ``CLIENT_CA_FILE`` on both ports. ``optional`` requests one on the HTTPS port
and refuses an invalid one; grpcio can only request-and-require or not request at all, so on
the gRPC port ``optional`` requests none. A verified certificate's common name maps to the
identity ``cert:<CN>`` (``identity_from_subject``); the JWT is still required on every surface.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gateway.config import ConfigError, GatewayConfig
from gateway.errors import Unauthenticated

log = logging.getLogger(__name__)

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
IDENTITY_PREFIX = "cert:"
MAX_COMMON_NAME_CHARS = 64  # ub-common-name, RFC 5280 appendix A.1
_VERIFY_MODES = {
    "off": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}

# One RDN sequence as ``ssl.SSLSocket.getpeercert()["subject"]`` gives it.
Subject = Sequence[Sequence[tuple[str, str]]]


class TlsFilesInvalid(ConfigError):
    """A certificate, key or CA file cannot be read or used."""


def identity_from_common_names(names: Sequence[str]) -> str:
    """``cert:<CN>`` for a verified client certificate with these subject common names.

    Exactly one common name is accepted, printable, without surrounding spaces and at most
    64 characters long; anything else raises ``Unauthenticated``.
    """
    if len(names) != 1:
        raise Unauthenticated("the client certificate must name exactly one common name")
    name = names[0]
    if (
        not name
        or len(name) > MAX_COMMON_NAME_CHARS
        or not name.isprintable()
        or name != name.strip()
    ):
        raise Unauthenticated("the client certificate's common name is not a usable identity")
    return IDENTITY_PREFIX + name


def identity_from_subject(subject: Subject) -> str:
    """``cert:<CN>`` for a verified client certificate's subject, in ``getpeercert()`` form."""
    names = [value for rdn in subject for key, value in rdn if key == "commonName"]
    return identity_from_common_names(names)


@dataclass(frozen=True)
class TlsFiles:
    """Where the public ports' certificate, key and client CA are read from."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    client_cert_mode: str

    @classmethod
    def from_config(cls, config: GatewayConfig, base_dir: Path) -> TlsFiles:
        def resolve(name: str) -> Path:
            path = Path(name)
            return path if path.is_absolute() else base_dir / path

        ca = resolve(config.client_ca_file) if config.client_cert_mode != "off" else None
        return cls(
            resolve(config.tls_cert_file), resolve(config.tls_key_file), ca, config.client_cert_mode
        )


@dataclass(frozen=True)
class LoadedCertificate:
    """What a load produced; ``describe`` is safe to log (no key material)."""

    http_context: ssl.SSLContext
    grpc_config: grpc.ServerCertificateConfiguration
    serial: int
    subject: str
    not_after: dt.datetime

    def describe(self) -> str:
        return (
            f"serial {self.serial:x}, subject {self.subject}, "
            f"expires {self.not_after:%Y-%m-%dT%H:%M:%SZ}"
        )


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesInvalid(f"{variable}: cannot read {str(path)!r} ({exc.strerror})") from exc


def http_ssl_context(files: TlsFiles, client_ca_pem: bytes | None) -> ssl.SSLContext:
    """A server context with the gateway's posture, certificate and client-certificate mode."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # Client-initiated TLS 1.2 renegotiation only costs server CPU (CVE-2011-1473); nothing
    # here needs it. TLS 1.3 has none.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFilesInvalid(
            f"TLS_CERT_FILE, TLS_KEY_FILE: cannot load {str(files.cert_file)!r} with "
            f"{str(files.key_file)!r} ({exc})"
        ) from exc
    if client_ca_pem is not None:
        context.verify_mode = _VERIFY_MODES[files.client_cert_mode]
        try:
            context.load_verify_locations(cadata=client_ca_pem.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise TlsFilesInvalid(f"CLIENT_CA_FILE: no usable CA certificate ({exc})") from exc
    return context


def _parse_pair(cert_pem: bytes, key_pem: bytes) -> x509.Certificate:
    """The leaf certificate, checked to belong to ``key_pem`` (grpc core checks it only later,
    in the handshake, where a mismatch would break every new gRPC connection)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # TypeError: encrypted key
        raise TlsFilesInvalid(
            f"TLS_CERT_FILE, TLS_KEY_FILE: not an unencrypted PEM pair ({exc})"
        ) from exc
    if cert.public_key() != key.public_key():
        raise TlsFilesInvalid("TLS_KEY_FILE: the key does not match TLS_CERT_FILE")
    return cert


def load_certificate(files: TlsFiles) -> LoadedCertificate:
    """Read and check the files, then build both ports' configuration from them."""
    cert_pem = _read(files.cert_file, "TLS_CERT_FILE")
    key_pem = _read(files.key_file, "TLS_KEY_FILE")
    ca_pem = _read(files.client_ca_file, "CLIENT_CA_FILE") if files.client_ca_file else None
    cert = _parse_pair(cert_pem, key_pem)
    return LoadedCertificate(
        http_context=http_ssl_context(files, ca_pem),
        grpc_config=grpc.ssl_server_certificate_configuration(
            [(key_pem, cert_pem)], root_certificates=ca_pem
        ),
        serial=cert.serial_number,
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
    )


class PublicTls:
    """The public ports' TLS: the current certificate, swapped for new handshakes on reload."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.current = load_certificate(files)
        # uvicorn listens with this context; new connections move to ``current``'s.
        self.http_context = self.current.http_context
        self.http_context.sni_callback = self._on_client_hello
        self._grpc_lock = threading.Lock()
        self._grpc_pending: grpc.ServerCertificateConfiguration | None = None

    def _on_client_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        context = self.current.http_context
        if connection.context is not context:
            connection.context = context

    def _fetch_grpc_config(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs on a grpc core thread before each handshake; None keeps the current config.
        with self._grpc_lock:
            pending, self._grpc_pending = self._grpc_pending, None
        return pending

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials for the gRPC port that follow ``reload``."""
        return grpc.dynamic_ssl_server_credentials(
            self.current.grpc_config,
            # grpc-stubs omit the documented ``None`` ("no change") from the fetcher's type.
            self._fetch_grpc_config,  # type: ignore[arg-type]
            require_client_authentication=self.files.client_cert_mode == "required",
        )

    def reload(self) -> LoadedCertificate:
        """Read the files again; new handshakes on both ports use them from now on.

        Blocking file work: call it in a thread. Raises ``TlsFilesInvalid`` and keeps the
        current certificate when the files cannot be used.
        """
        loaded = load_certificate(self.files)
        with self._grpc_lock:
            self._grpc_pending = loaded.grpc_config
        self.current = loaded
        return loaded


async def reload_on_request(tls: PublicTls | None, requested: asyncio.Event) -> None:
    """Reload ``tls`` each time ``requested`` is set (on SIGHUP); runs until cancelled."""
    while True:
        await requested.wait()
        requested.clear()
        if tls is None:
            log.warning("SIGHUP: TLS is off, no certificate to reload")
            continue
        try:
            loaded = await asyncio.to_thread(tls.reload)
        except TlsFilesInvalid as exc:
            log.error("TLS reload failed, keeping the current certificates: %s", exc)
            continue
        log.info("reloaded TLS certificates (%s)", loaded.describe())
