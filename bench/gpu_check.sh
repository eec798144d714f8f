#!/usr/bin/env bash
# GPU check of the training step: DeepSpeed on one CUDA device (NCCL, bf16, ZeRO-1 and ZeRO-3) for the
# default and the CelebA-size one-step models; images/s and peak memory into a JSON
# (bench/gpu_check.py; how to run it and what it needs: docs/pipeline.md, "GPU check").
#
#   bash bench/gpu_check.sh                                  # -> docs/results/gpu_check.json
#   GPU_CHECK_JSON=/tmp/gpu.json bash bench/gpu_check.sh --steps 50
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3), GPU_CHECK_JSON (where the
# JSON goes). A host whose Python has torch with CUDA but no DeepSpeed takes the wheels in .whl/
# (made by bench/gpu_check_wheels.sh on a machine with network); they are installed under /tmp only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
json=${GPU_CHECK_JSON:-docs/results/gpu_check.json}

if ! gpus=$(nvidia-smi -L 2>&1); then
  echo "gpu_check: no GPU here (nvidia-smi -L: ${gpus})" >&2
  exit 2
fi
echo "gpu_check: ${gpus}"

if ! "$PYTHON" -c "import deepspeed" >/dev/null 2>&1; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    site=/tmp/gpu-check-site
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: $PYTHON cannot import deepspeed and .whl/ holds no wheels: run make install" \
         "(it takes the CUDA build of torch on a GPU host), or bring wheels made by bench/gpu_check_wheels.sh" >&2
    exit 2
  fi
fi

# The Makefile's CPU settings must not leak in: DeepSpeed on the CUDA accelerator, NCCL on loopback.
export DS_ACCELERATOR=cuda PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
unset GLOO_SOCKET_IFNAME
export NCCL_SOCKET_IFNAME=lo
mkdir -p "$(dirname "$json")"
exec "$PYTHON" -m bench.gpu_check --json "$json" "$@"
