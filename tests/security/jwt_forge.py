"""Hand-made JSON Web Tokens for the attack tests: any header, any claims, any signature.

PyJWT refuses to build most of these (``alg: none`` with a signature, an HMAC keyed with a
PEM public key, a ``NaN`` expiry), so the compact serialization (RFC 7515 section 7.1) is
written here by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.stack import AUDIENCE, ISSUER

UNSET = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    """A header or payload segment: JSON text (``bytes`` are used as they are)."""
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return b64url(raw)


def claims(subject: str, **overrides: Any) -> dict[str, Any]:
    """Valid claims for the test stacks; an override of ``UNSET`` removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + 600}
    base.update(iss=ISSUER, aud=AUDIENCE)
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not UNSET}


def hs256(key: bytes, signing_input: str, digest: Any = hashlib.sha256) -> str:
    return b64url(hmac.new(key, signing_input.encode(), digest).digest())


def compact(header: Any, payload: Any, key: bytes | None, digest: Any = hashlib.sha256) -> str:
    """``header.payload.signature``; the HMAC of ``key`` over both, or empty without a key."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = hs256(key, signing_input, digest) if key is not None else ""
    return f"{signing_input}.{signature}"


def rs256(header: Any, payload: Any, key: rsa.RSAPrivateKey) -> str:
    """An RS256 (RSASSA-PKCS1-v1_5 with SHA-256) token over any header, ``kid`` included."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"
