"""Development certificates: a dev CA, the gateway's server and mesh-client
certificates, and one server certificate per back-end (``cryptography``).

``issue_cert`` and ``issue_client_cert`` add certificates signed by an existing
development CA: a rotated server certificate, or a client certificate for the
public ports (``CLIENT_CERT_MODE``), whose common name becomes ``cert:<CN>``.

Private keys are written with mode 0600. Existing files are kept unless
``force`` is set, so ``make run`` can call this every time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GATEWAY_HOSTS = ("localhost", "127.0.0.1", "::1", "assistant.local")
BACKENDS = ("chat", "tasks")
VALIDITY_DAYS = 825


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in PEM."""

    cert_pem: bytes
    key_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dialog Gateway (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(now: dt.datetime) -> tuple[Issued, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed development CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("Dialog Gateway Dev CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    hosts: Iterable[str] = (),
    server: bool = True,
    client: bool = False,
    now: dt.datetime,
    valid_days: int = VALIDITY_DAYS,
) -> Issued:
    """A leaf certificate signed by the CA, for server and/or client use, valid from five
    minutes before ``now`` for ``valid_days``."""
    key = ec.generate_private_key(ec.SECP256R1())
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    names = list(hosts) or [common_name]
    builder = builder.add_extension(_san(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write(directory: Path, stem: str, issued: Issued) -> None:
    (directory / f"{stem}.pem").write_bytes(issued.cert_pem)
    key_path = directory / f"{stem}-key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(issued.key_pem)
    os.chmod(key_path, 0o600)


def create_dev_certs(
    directory: Path, *, backends: Iterable[str] = BACKENDS, force: bool = False
) -> bool:
    """Write the development PKI into ``directory``. Returns False if it already existed."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.pem").exists() and not force:
        return False
    now = dt.datetime.now(dt.UTC)
    ca, ca_key, ca_cert = make_ca(now)
    _write(directory, "ca", ca)
    _write(
        directory, "gateway", issue(ca_key, ca_cert, "dialog-gateway", hosts=GATEWAY_HOSTS, now=now)
    )
    _write(
        directory,
        "gateway-client",
        issue(ca_key, ca_cert, "dialog-gateway", server=False, client=True, now=now),
    )
    for name in backends:
        hosts = (name, f"{name}.dialog.internal", "localhost", "127.0.0.1")
        _write(directory, name, issue(ca_key, ca_cert, name, hosts=hosts, now=now))
    return True


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The development CA written by ``create_dev_certs`` into ``directory``."""
    key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca-key.pem'}: not an EC private key")
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    return key, cert


def issue_cert(
    directory: Path,
    stem: str,
    common_name: str,
    *,
    hosts: Iterable[str] = (),
    server: bool = True,
    client: bool = False,
    now: dt.datetime | None = None,
    valid_days: int = VALIDITY_DAYS,
) -> Issued:
    """Issue a certificate from the CA in ``directory`` and write ``<stem>.pem`` and
    ``<stem>-key.pem`` there (the key with mode 0600), replacing existing files."""
    ca_key, ca_cert = load_ca(directory)
    issued = issue(
        ca_key,
        ca_cert,
        common_name,
        hosts=hosts,
        server=server,
        client=client,
        now=now or dt.datetime.now(dt.UTC),
        valid_days=valid_days,
    )
    _write(directory, stem, issued)
    return issued


def issue_client_cert(
    directory: Path,
    name: str,
    *,
    now: dt.datetime | None = None,
    valid_days: int = VALIDITY_DAYS,
) -> Issued:
    """A client certificate for the public ports, common name ``name``, written as
    ``<name>.pem`` and ``<name>-key.pem`` in ``directory`` (signed by its CA)."""
    return issue_cert(
        directory, name, name, server=False, client=True, now=now, valid_days=valid_days
    )
