#!/usr/bin/env bash
# Each extra proven alone: a fresh virtual environment per extra, `pip install ".[hf,EXTRA]"` (torch first,
# pinned), the test runner, then the tests of that extra. Fails loudly on the first failure.
#   bash scripts/test-extras.sh [PYTHON] [TORCH]      (default python3 torch==2.13.0)
set -euo pipefail
PYTHON=${1:-python3}
TORCH=${2:-torch==2.13.0}
cd "$(dirname "$0")/.."
declare -A TESTS=(
  [ray]="tests/test_ray_executor.py"
  [llamacpp]="tests/test_llamacpp.py tests/test_gguf.py tests/test_llamacpp_spec.py"
  [quality]="tests/test_humaneval.py tests/test_quality_run.py"
)
for extra in ray llamacpp quality; do
  venv=".venv-extra-$extra"
  echo "== extra [$extra] alone, in $venv"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$TORCH"
  "$venv/bin/python" -m pip install -q -e ".[hf,$extra]" "pytest>=8,<9" "pytest-timeout>=2.3" "hypothesis>=6.100"
  # shellcheck disable=SC2086  # the list of test files
  bash scripts/run-tests.sh "$venv/bin/python" ${TESTS[$extra]} -p no:cacheprovider
done
echo "== every extra passed alone"
