"""``python -m adapters.tasks``: run the tasks adapter with the process environment."""

from __future__ import annotations

import os
import sys

from adapters.cli import main
from adapters.tasks.server import run

if __name__ == "__main__":
    sys.exit(main(run, os.environ))
