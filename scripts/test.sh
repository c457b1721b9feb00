#!/usr/bin/env bash
# Runs every test: the GoogleTest binaries and the example app through ctest, then pytest. Needs scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ctest --test-dir build --output-on-failure -j2
.venv/bin/python -m pytest tests/python -q -p no:cacheprovider
