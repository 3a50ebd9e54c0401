"""JSON transcoding of the routed back-ends' gRPC methods (the pure core: no I/O).

Every method of every routed back-end service is offered over HTTP/JSON, from the
descriptors the gateway learned from the back-ends' reflection (``gateway.grpc.descriptors``):
nothing is generated or rebuilt when a back-end changes.

- ``template``: ``google.api.http`` path templates, parsed, matched and ranked;
- ``rules``: the ``google.api.http`` rules of a method, checked against its messages;
- ``fields``: field paths and the JSON values of path and query parameters;
- ``request``: an HTTP request (path bindings, query, JSON body) → the request message;
- ``response``: a response message → JSON, and a gRPC status → the JSON error;
- ``table``: every route of a ``Catalog``, compiled, and the match of one request;
- ``openapi``: the OpenAPI paths and schemas of those routes;
- ``metadata``: a back-end's response metadata → ``Grpc-Metadata-*``/``Grpc-Trailer-*`` headers;
- ``cors``: the CORS answers of the HTTPS port, from the methods each path has.

``gateway.http.transcoding`` is the shell that feeds it and calls the back-ends.
"""
