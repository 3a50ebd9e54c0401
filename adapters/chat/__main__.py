"""``python -m adapters.chat``: run the chat adapter with the process environment."""

from __future__ import annotations

import os
import sys

from adapters.chat.server import run
from adapters.cli import main

if __name__ == "__main__":
    sys.exit(main(run, os.environ))
