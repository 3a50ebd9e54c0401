"""The HTTPS surface: ``POST /messages``, ``/events/stream``, ``/ws``, ``/health``, ``/metrics``."""
