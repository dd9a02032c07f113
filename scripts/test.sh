#!/usr/bin/env bash
# The project's test command (README quick start). Default run excludes tests marked slow.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
