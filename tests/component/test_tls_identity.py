"""Client certificate rules without a socket: the subject → identity mapping, and the
configuration lines that guard CLIENT_CERT_MODE. (Real handshakes that produce these
subjects are in test_tls_public.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.errors import Unauthenticated
from gateway.tls import Subject, identity_from_common_names, identity_from_subject

ORG = (("organizationName", "Dialog Gateway (development)"),)


@pytest.mark.parametrize(
    ("subject", "identity"),
    [
        ((ORG, (("commonName", "alice"),)), "cert:alice"),
        (((("commonName", "svc.tray-01"),),), "cert:svc.tray-01"),
        # A multi-valued RDN still names one common name.
        (((("organizationName", "x"), ("commonName", "bob")),), "cert:bob"),
        (((("commonName", "c" * 64),),), "cert:" + "c" * 64),
    ],
)
def test_subject_maps_to_cert_identity(subject: Subject, identity: str) -> None:
    assert identity_from_subject(subject) == identity


@pytest.mark.parametrize(
    "subject",
    [
        (ORG,),  # no common name
        ((("commonName", "alice"),), (("commonName", "bob"),)),  # ambiguous
        ((("commonName", ""),),),
        ((("commonName", " alice"),),),
        ((("commonName", "alice\nbob"),),),
        ((("commonName", "c" * 65),),),
    ],
)
def test_unusable_subject_is_unauthenticated(subject: Subject) -> None:
    with pytest.raises(Unauthenticated):
        identity_from_subject(subject)


def test_grpc_common_names_follow_the_same_rules() -> None:
    assert identity_from_common_names(["alice"]) == "cert:alice"
    with pytest.raises(Unauthenticated):
        identity_from_common_names([])


BASE_ENV = {"JWT_SECRET": "dev-secret-for-tests"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLIENT_CERT_MODE": "sometimes"}, "CLIENT_CERT_MODE: expected off, optional or required"),
        ({"CLIENT_CERT_MODE": "required"}, "CLIENT_CERT_MODE: required needs CLIENT_CA_FILE"),
        ({"CLIENT_CERT_MODE": "optional"}, "CLIENT_CERT_MODE: optional needs CLIENT_CA_FILE"),
        (
            {"CLIENT_CERT_MODE": "required", "CLIENT_CA_FILE": "ca.pem", "TLS": "off"},
            "CLIENT_CERT_MODE: required needs TLS=on",
        ),
    ],
)
def test_invalid_client_cert_settings_stop_the_start(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({**BASE_ENV, **env}, tmp_path)
    assert str(caught.value) == message


@pytest.mark.parametrize("mode", ["off", "optional", "required"])
def test_valid_client_cert_settings_load(mode: str, tmp_path: Path) -> None:
    config = load_config(
        {**BASE_ENV, "CLIENT_CERT_MODE": mode, "CLIENT_CA_FILE": "certs/ca.pem"}, tmp_path
    )
    assert config.client_cert_mode == mode
