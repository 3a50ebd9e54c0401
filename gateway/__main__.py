"""``python -m gateway`` is the ``dialog-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
