#!/usr/bin/env bash
# The newest releases, on purpose: install into .venv-latest the newest releases pyproject.toml's ranges allow
# (not the lock), say how they differ from the lock, and run the fast lane and the served-model tests with them,
# so that a breaking release is found here first. Run it before every scripts/lock.sh and say what it found in the
# lock's commit. torch stays on 2.13.0 (a newer torch is a CUDA build of several GB here; moving torch is a
# decision of its own). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=.venv-latest
export MP16_UNLOCKED=1  # tests/test_environment.py: this environment is not the lock, on purpose
[ -x $venv/bin/python ] || "$PYTHON" -m venv $venv
$venv/bin/python -m pip install -q --upgrade pip
$venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
$venv/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c constraints.txt \
  -e ".[build,ray,s3,train,demo,audit,dev]"
$venv/bin/python -m pip install -q --upgrade --no-deps "geoclip>=1.3,<2"
echo "newer than the lock (requirements/dev.txt):"
$venv/bin/python - <<'PY'
import importlib.metadata as md
import re
from pathlib import Path

from packaging.utils import canonicalize_name

locked = dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", Path("requirements/dev.txt").read_text(), re.M))
for dist in sorted(md.distributions(), key=lambda d: canonicalize_name(d.metadata["Name"])):
    name = canonicalize_name(dist.metadata["Name"])
    if name in locked and locked[name] != dist.version.split("+")[0]:
        print(f"  {name}: {locked[name]} -> {dist.version}")
PY
$venv/bin/python -m pytest -q -m "not slow" "$@"
$venv/bin/python -m pytest -q tests/test_globe_train/test_serve_eval.py "$@"
