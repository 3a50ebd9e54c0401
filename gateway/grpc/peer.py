"""The client certificate identity of a gRPC call (``CLIENT_CERT_MODE=required``).

grpc core puts a verified client certificate's common names into the call's auth context as
``x509_common_name``; without a verified certificate (client certificates off or optional,
or TLS off) the key is absent.
"""

from __future__ import annotations

from typing import Any

import grpc

from gateway.errors import Unauthenticated
from gateway.tls import identity_from_common_names

COMMON_NAME_KEY = "x509_common_name"


def client_cert_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """``cert:<CN>`` of the verified client certificate on the call's connection, or None.

    Raises ``Unauthenticated`` when the certificate's common name is not a usable identity.
    """
    raw = context.auth_context().get(COMMON_NAME_KEY)
    if not raw:
        return None
    try:
        names = [value.decode("utf-8") for value in raw]
    except UnicodeDecodeError as exc:
        raise Unauthenticated("the client certificate's common name is not UTF-8") from exc
    return identity_from_common_names(names)
