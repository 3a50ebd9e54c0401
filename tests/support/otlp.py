"""An OTLP/HTTP traces receiver on loopback that keeps every export request it is sent."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: ExportTraceServiceRequest


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)

    def spans(self) -> list[tuple[str, Span]]:
        """Every span received so far, with its resource's ``service.name``."""
        out: list[tuple[str, Span]] = []
        for request in list(self.requests):
            for resource_spans in request.body.resource_spans:
                attributes = resource_spans.resource.attributes
                service = next(a.value.string_value for a in attributes if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    out.extend((service, span) for span in scope.spans)
        return out


@contextlib.contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    receiver = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = ExportTraceServiceRequest.FromString(body)
            receiver.requests.append(Received(self.path, headers, request))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
