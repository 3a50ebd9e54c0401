"""Listening sockets that worker processes share (gateway.listeners), on loopback."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from gateway.config import ConfigError, GatewayConfig
from gateway.listeners import http_listeners, shared_listeners
from tests.support.stack import free_port


def test_two_workers_bind_and_listen_on_one_port() -> None:
    port = free_port()
    first = shared_listeners("127.0.0.1", port)
    second = shared_listeners("127.0.0.1", port)
    try:
        assert [s.getsockname() for s in first + second] == [("127.0.0.1", port)] * 2
        for sock in first + second:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            sock.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for sock in first + second:
            sock.close()


def test_a_port_held_without_reuseport_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            shared_listeners("127.0.0.1", port)
    assert str(info.value) == f"PORT: cannot listen on 127.0.0.1:{port}: address already in use"


def test_one_worker_leaves_the_ports_to_uvicorn() -> None:
    config = GatewayConfig(port=free_port(), admin_port=free_port())
    assert http_listeners(config) == {}
    shared = http_listeners(dataclasses.replace(config, workers=2))
    try:
        assert sorted(shared) == sorted([config.port, config.admin_port])
        assert all(len(socks) == 1 for socks in shared.values())
    finally:
        for socks in shared.values():
            for sock in socks:
                sock.close()
