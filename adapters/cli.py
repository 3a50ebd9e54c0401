"""The entry point shared by ``python -m adapters.<name>``.

This is the one place that hands the process environment to an adapter. It also
installs the process's tracer provider from the ``OTEL_*`` variables (``adapters.tracing``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from adapters import tracing

EXIT_CONFIG = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def main(run: Callable[[Mapping[str, str]], Coroutine[Any, Any, None]],
         env: Mapping[str, str]) -> int:
    """Configure logging, then run the adapter; a bad setting exits with one line."""
    level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        print(f"error: LOG_LEVEL: invalid value {level!r} (expected one of {LOG_LEVELS})",
              file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        traces = tracing.install(env, tracing.service_name_of(run))
        try:
            asyncio.run(run(env))
        finally:
            traces.shutdown()  # exports the last spans
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
