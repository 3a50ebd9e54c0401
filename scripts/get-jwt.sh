#!/usr/bin/env bash
# Print a fresh development JWT on stdout (the CLI loads .env itself).
# Usage: scripts/get-jwt.sh [--sub NAME] [other `dialog-gateway token` options]
#   TOKEN="$(scripts/get-jwt.sh --sub alice)"
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/dialog-gateway" token "$@"
