#!/usr/bin/env bash
# MultiVae (the peer library of benchmarks/throughput.py) in its OWN virtual environment.
#
#   bash benchmarks/multivae_env.sh [VENV_DIR]        # default: ./.multivae-venv
#   python benchmarks/throughput.py --multivae-python VENV_DIR/bin/python ...
#
# MultiVae is never a dependency of pyro_mmvae, and this environment never sees pyro_mmvae:
# the benchmark runs MultiVae's side in a worker process of this interpreter. torch and
# torchvision are pinned to the versions of our environment (torch 2.14.1), so both sides
# run the same kernels; the constraints file stops multivae's requirements from moving them.
set -euo pipefail

VENV="${1:-.multivae-venv}"
TORCH="${TORCH_VERSION:-2.14.1}"
TORCHVISION="${TORCHVISION_VERSION:-0.29.1}"
MULTIVAE="${MULTIVAE_VERSION:-1.0.3}"

python3 -m venv "$VENV"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION" > "$constraints"
"$VENV/bin/pip" install "torch==$TORCH" "torchvision==$TORCHVISION" "multivae==$MULTIVAE" \
    -c "$constraints"
"$VENV/bin/python" -c "import torch, multivae; from importlib.metadata import version; \
print('MultiVae', version('multivae'), 'torch', torch.__version__, 'in', '$VENV')"
