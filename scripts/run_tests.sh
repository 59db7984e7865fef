#!/usr/bin/env bash
# Test job: set up .venv (with the test-only requirements), run the default suite, then the slow-marked checks.
# Extra arguments go to both pytest calls (e.g. -x, -k name). SKIP_SLOW=1 skips the slow checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh" "$ROOT/requirements-dev.txt"
cd "$ROOT"
python -m pytest tests -m "not slow" -q -p no:cacheprovider "$@"
if [ "${SKIP_SLOW:-0}" != "1" ]; then
    rc=0
    python -m pytest tests -m slow -q -p no:cacheprovider "$@" || rc=$?
    # exit 5: no test carries the slow mark, which is not a failure
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
fi
