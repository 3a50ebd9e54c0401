"""The WebSocket bridge at ``GET /ws`` (subprotocol ``dialog.v1.json``)."""
