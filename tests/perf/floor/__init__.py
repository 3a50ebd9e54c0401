"""The Python floor: the least a Python gateway on the same libraries can cost.

Each program here serves one path with the libraries Dialog Gateway is built on, and does
nothing else: no authentication, no store, no limits, no metrics, no tracing. Measured with
the same load generator as the gateway, its row is the ceiling of those libraries on this
machine, so that the table separates what the gateway's own work costs from what its
transports cost.

- ``ws``: uvicorn (uvloop, websockets-sansio) and Starlette over TLS; each text frame is
  answered with the three frames the gateway sends (ack, delta, final reply), with no
  back-end;
- ``relay``: a grpcio asyncio server over TLS that relays ``echo.Echo`` calls as raw bytes to
  the back-end over mutual TLS: unary calls with ``unary_unary``, the others with
  ``stream_stream``.
"""
