#!/usr/bin/env bash
# Set everything up, then run the test suite against a real nats-server and real FUSE mounts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
