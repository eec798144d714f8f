#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh on an offline GPU host whose Python has torch (CUDA) but no DeepSpeed:
# DeepSpeed (it ships as an sdist; built here into a pure-Python wheel) and the dependencies such
# images usually lack, at the versions of this project's environment. Run where pip reaches PyPI:
#
#   bash bench/gpu_check_wheels.sh                  # for CPython 3.12 on x86_64 Linux, into .whl/
#   TARGET_PYTHON=3.11 bash bench/gpu_check_wheels.sh
#
# then copy the repository with .whl/ to the GPU host and run bash bench/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
target=${TARGET_PYTHON:-3.12}
out=${WHEEL_DIR:-.whl}

version() {  # the installed version of a distribution in this project's environment
  "$PIP" show "$1" 2>/dev/null | sed -n 's/^Version: //p'
}
pins=()
for dist in deepspeed hjson pydantic pydantic-core annotated-types typing-inspection; do
  v=$(version "$dist")
  [[ -n "$v" ]] || { echo "gpu_check_wheels: $dist is not installed in the environment of $PIP (make install)" >&2; exit 2; }
  pins+=("$dist==$v")
done
mkdir -p "$out"
# pure-Python ones (deepspeed, hjson) build or download for any Python; pydantic-core is compiled
"$PIP" wheel -q --no-deps -w "$out" "${pins[0]}" "${pins[1]}"
"$PIP" download -q --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out" "${pins[@]:2}"
ls -1 "$out"
