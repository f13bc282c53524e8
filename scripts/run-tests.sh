#!/usr/bin/env bash
# Runs the whole suite; pytest's exit code 5 ("no tests collected") counts as a failure.
set -uo pipefail
PY=${1:-python3}
"$PY" -m pytest -q -ra --durations=15 "${@:2}"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "run-tests: pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
