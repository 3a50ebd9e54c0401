"""A stand-in for Consul's HTTP API, for the tests (Consul cannot run on the build machine).

It serves the one endpoint the gateway calls, as the Consul API documents it:
``GET /v1/health/service/<name>`` with ``passing`` (only entries whose checks all pass),
blocking queries (``index`` and ``wait``: the answer waits until the service's index
passes ``index`` or ``wait`` elapses) and the ``X-Consul-Index`` header; with a ``token``,
a request without that ``X-Consul-Token`` gets 403. ``set_instances`` changes a service's
instances (and its index), waking the blocked queries.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_WAIT = re.compile(r"(\d+)(ms|s|m)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
Instance = tuple[str, int, str]  # address, port, check status ("passing", "critical", ...)


class FakeConsul:
    """The state: each service's instances and the cluster's index."""

    def __init__(self, token: str = ""):
        self.token = token
        self.index = 1
        self._services: dict[str, tuple[int, list[Instance]]] = {}
        self._changed = threading.Condition()
        self.requests: list[dict[str, list[str]]] = []

    def set_instances(self, service: str, instances: Sequence[Instance]) -> None:
        with self._changed:
            self.index += 1
            self._services[service] = (self.index, list(instances))
            self._changed.notify_all()

    def answer(self, service: str, index: int, wait_s: float, passing: bool) -> tuple[int, Any]:
        """Block while the service's index is at most ``index`` (up to ``wait_s``)."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while True:
                service_index, instances = self._services.get(service, (1, []))
                left = deadline - time.monotonic()
                if index == 0 or service_index > index or left <= 0:
                    break
                self._changed.wait(left)
        body = [
            {
                "Node": {"Node": f"node-{i}", "Address": "127.0.0.1"},
                "Service": {"ID": f"{service}-{i}", "Service": service, "Address": a, "Port": p},
                "Checks": [{"CheckID": "serfHealth", "Status": status}],
            }
            for i, (a, p, status) in enumerate(instances)
            if not passing or status == "passing"
        ]
        return service_index, body


def _handler(consul: FakeConsul) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            consul.requests.append({"path": [url.path], **query})
            if consul.token and self.headers.get("X-Consul-Token") != consul.token:
                self._send(403, b"ACL not found", {})
                return
            prefix = "/v1/health/service/"
            if not url.path.startswith(prefix):
                self._send(404, b"not found", {})
                return
            wait = _WAIT.fullmatch(query.get("wait", ["300s"])[0])
            wait_s = min(int(wait.group(1)) * _UNITS[wait.group(2)], 600) if wait else 300
            passing = "passing" in query and query["passing"][0] not in ("false", "0")
            index, body = consul.answer(
                unquote(url.path[len(prefix) :]),
                int(query.get("index", ["0"])[0] or 0),
                wait_s,
                passing,
            )
            headers = {"Content-Type": "application/json", "X-Consul-Index": str(index)}
            self._send(200, json.dumps(body).encode(), headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            try:
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on a blocking query (it stopped, or timed out)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running_consul(token: str = "") -> Iterator[tuple[FakeConsul, str]]:
    """A fake Consul on a free loopback port, in a thread: ``(state, "http://host:port")``."""
    consul = FakeConsul(token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(consul))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-consul", daemon=True)
    thread.start()
    try:
        yield consul, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
