#!/usr/bin/env bash
# Create .venv and install the project with every extra, keeping torch on the tested 2.13.0 release.
# EXTRAS=dev bash scripts/setup.sh installs less; PYTHON=python3.12 picks another interpreter.
# With the dev extra it also creates .venv-olah (a local read-only Hub for the tests; TEST_HUB=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-build,ray,s3,train,demo,dev}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, alone: otherwise a dependency may pull the newest CUDA build.
if [[ ",$EXTRAS," == *",train,"* || ",$EXTRAS," == *",build,"* ]]; then
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${EXTRAS}]"
# GeoCLIP, the coordinate teacher (kind: geoclip), without its declared torchvision, which has no build for
# this torch on CPU machines and which its inference code never imports; what it does need comes with [build].
if [[ ",$EXTRAS," == *",build,"* ]]; then
  .venv/bin/python -m pip install -q --no-deps "geoclip>=1.3,<2"
fi
# The tests serve datasets and models through olah, a read-only Hub mirror, from its own environment
# (its pins would downgrade ours). TEST_HUB=0 skips it; the Hub tests then skip too.
if [[ ",$EXTRAS," == *",dev,"* && "${TEST_HUB:-1}" != "0" ]]; then
  [ -x .venv-olah/bin/olah-cli ] || { "$PYTHON" -m venv .venv-olah && .venv-olah/bin/python -m pip install -q olah; }
fi
# A second environment with stock transformers beside torchvision (torch 2.14.1, which has a torchvision build;
# it runs on the CPU too): the tests load our checkpoints there as users' machines do, with nothing of ours
# imported and no workaround applied. TEST_STOCK=0 skips it; those tests then skip too.
if [[ ",$EXTRAS," == *",dev,"* && "${TEST_STOCK:-1}" != "0" ]]; then
  if [ ! -x .venv-stock/bin/python ]; then
    "$PYTHON" -m venv .venv-stock
    .venv-stock/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    .venv-stock/bin/python -m pip install -q -c <(echo "torch==2.14.1") "transformers>=5" pillow accelerate
  fi
fi
echo "mp16-reason installed in .venv ($(.venv/bin/python -c 'import mp16_reason; print(mp16_reason.__version__)'))"
