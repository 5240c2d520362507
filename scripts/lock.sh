#!/usr/bin/env bash
# Re-resolve the development environments from pyproject.toml's ranges, as of today, and write the locks that
# scripts/setup.sh and CI install from (every package pinned, with hashes):
#   requirements/dev.txt    .venv: the project with every extra, torch on its CPU build, and GeoCLIP (no deps)
#   requirements/olah.txt   .venv-olah: olah, the read-only Hub the tests serve datasets and models from
# The GPU stack ([train,gpu]) is not locked: vLLM pins a CUDA torch and image stack that no CPU machine can
# install; scripts/gpu-smoke.sh installs it from the ranges on the GPU machine, and CI checks it resolves.
# Run scripts/test-latest.sh first (it tests what this would pin), and say what it found in the lock's commit.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip packaging
resolve() {  # resolve REPORT ARGS...: what `pip install ARGS` would install into an empty environment
  local report=$1
  shift
  "${pip[@]}" install -q --dry-run --ignore-installed --report "$report" "$@"
}
resolve "$tmp/dev.json" -c constraints.txt "torch==2.13.0" ".[build,ray,s3,train,demo,audit,dev]"
resolve "$tmp/geoclip.json" --no-deps "geoclip>=1.3,<2"
resolve "$tmp/olah.json" olah
"$tmp/venv/bin/python" scripts/lock.py requirements/dev.txt "$tmp/dev.json" "$tmp/geoclip.json"
"$tmp/venv/bin/python" scripts/lock.py requirements/olah.txt "$tmp/olah.json"
