"""A plain-HTTP server on 127.0.0.1 that serves fixed documents and records every request.

It plays two parts: the identity provider's JWKS endpoint (JWKS_URL may be plain HTTP to a
loopback address), which a test can change or take down, and an attacker's key server named
by a token's ``jku``/``x5u`` header, which must never see a request.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.stack import free_port


class KeyServer:
    """``documents`` maps a path to the body answered with 200; anything else gets 404."""

    def __init__(self, documents: dict[str, bytes] | None = None):
        self.port = free_port()
        self.documents = dict(documents or {})
        self.requests: list[tuple[float, str]] = []  # (time.time(), path)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes) -> None:
        with self._lock:
            self.documents[path] = body

    def fetch_times(self, path: str) -> list[float]:
        with self._lock:
            return [at for at, p in self.requests if p == path]

    def start(self) -> KeyServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests.append((time.time(), self.path))
                    body = owner.documents.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="key-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: from now on a fetch gets "connection refused"."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
