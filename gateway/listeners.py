"""Listening sockets that several worker processes share (``WORKERS`` > 1).

Each worker binds the same HTTP port with ``SO_REUSEPORT`` and the kernel spreads new
connections over them (Linux: by a hash of the connection's addresses). uvicorn does not
set that option, so the sockets are made here and handed to it; gRPC sets it on its own
(``grpc.so_reuseport``, on by default). Only processes of the same user share a port.
"""

from __future__ import annotations

import socket

from gateway.config import ConfigError, GatewayConfig


def http_listeners(config: GatewayConfig) -> dict[int, list[socket.socket]]:
    """The shared sockets of the public HTTP port and of ``ADMIN_PORT`` (when set), by
    port, when ``config.workers`` > 1; none with one worker (uvicorn binds its ports)."""
    if config.workers == 1:
        return {}
    ports = [config.port, *([config.admin_port] if config.admin_port else [])]
    return {port: shared_listeners(config.host, port) for port in ports}


def shared_listeners(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for ``host``:``port`` with ``SO_REUSEPORT``, one per address the host
    resolves to, as uvicorn's own listener would bind them; uvicorn listens on them with
    its backlog. A failure is a ``ConfigError`` naming the address."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ConfigError(f"HOST: cannot resolve {host!r}: {exc}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(
            (a[0], a[1], a[2], "", a[4]) for a in addresses
        ):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As asyncio does: an IPv6 socket does not also take the IPv4 address.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"PORT: cannot listen on {host}:{port}: {reason}") from exc
    return sockets
