#!/usr/bin/env bash
# The project's test command (README quick start). Default run excludes tests marked slow.
set -uo pipefail
cd "$(dirname "$0")/.."
# One worker per CPU, at most 4 (each worker builds the session fixtures once; the XLA compilation cache
# of tests/conftest.py is shared through the environment). JAXFORGET_TEST_WORKERS=0 runs in one process.
python -m pytest -q -n "${JAXFORGET_TEST_WORKERS:-auto}" --maxprocesses 4 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
