#!/usr/bin/env bash
# Set up (or reuse) .venv with the test extras, then run the test suite. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the fault-injection and cluster tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "test,bench"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -q "$@"
