#!/usr/bin/env bash
# Set everything up (scripts/setup.sh with the test tools: edgel2[train,dev] and, as root,
# Debian's chromium for the browser test) and run the whole test suite. Extra arguments go to
# pytest.
set -euo pipefail
EDGEL2_EXTRAS=train,dev source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec python -m pytest "$@"
