#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow tests included. Extra args go to pytest.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$REPO/scripts/setup.sh"
set +u; source "$REPO/scripts/env.sh"; set -u
cd "$REPO"
# pytest exits 5 when it collects no test: that fails here like any other error.
exec python -m pytest "$@"
