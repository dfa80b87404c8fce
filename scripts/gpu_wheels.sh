#!/usr/bin/env bash
# Fetch the wheels that the GPU machine's image lacks into .whl/ (git-ignored), where pip
# works; scripts/gpu_check.sh installs them there when the device tool carries .whl.
#
# The image (Python 3.12, see the device tool's KINDS.md) holds numpy, scipy, threadpoolctl,
# numba, cupy-cuda13x, torch, transformers, accelerate, pytest and hypothesis, but not
# array-api-compat, which `import polarquant` needs. Pure-Python wheels: any platform.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# The array-api-compat the tests ran with here, else the newest release pip finds.
VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("array-api-compat"))' 2>/dev/null || true)"
FETCHED="$(mktemp -d)"
trap 'rm -rf "$FETCHED"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp -d "$FETCHED" "array-api-compat${VERSION:+==$VERSION}"
rm -rf .whl  # replaced only once the download worked
mkdir -p .whl
mv "$FETCHED"/*.whl .whl/
ls -l .whl
