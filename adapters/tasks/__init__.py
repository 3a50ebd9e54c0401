"""The tasks adapter: per-user tasks kept in SQLite.

Run it with ``python -m adapters.tasks``; see ``adapters.tasks.server.run``.
"""
