#!/usr/bin/env bash
# Create .venv from the lock (requirements/dev.txt: every package pinned with hashes, the set CI passed with) and
# install the project into it, editable. A fresh clone installs the same set on any day; scripts/lock.sh
# re-resolves the lock, scripts/test-latest.sh tests the newest releases the ranges allow.
#   TEST_HUB=0    skip .venv-olah, the read-only Hub the tests serve datasets from (its tests then skip)
#   PYTHON=python3.12 picks another interpreter (the lock is made for CPython 3.11 on Linux x86_64)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

locked() {  # locked VENV LOCK: a virtual environment holding exactly the lock's packages
  [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
  "$1/bin/python" -m pip install -q --upgrade pip
  # --no-deps: the lock is the whole set, resolved already; hashes check each file is the one locked.
  "$1/bin/python" -m pip install -q --require-hashes --no-deps -r "$2"
}

locked .venv requirements/dev.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
# The tests serve datasets and models through olah, a read-only Hub mirror, from its own environment (its pins
# would downgrade ours).
if [ "${TEST_HUB:-1}" != "0" ] && [ ! -x .venv-olah/bin/olah-cli ]; then
  locked .venv-olah requirements/olah.txt
fi
echo "mp16-reason installed in .venv ($(.venv/bin/python -c 'import mp16_reason; print(mp16_reason.__version__)'))"
