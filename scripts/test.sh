#!/usr/bin/env bash
# Set everything up, then run the test suite against a real nats-server and real FUSE mounts.
#
#   bash scripts/test.sh [PYTEST ARGS]          the suite CI runs (tests/; tests/long is skipped)
#   bash scripts/test.sh --long [PYTEST ARGS]   the long tests only (tests/long, HVFS_LONG=1):
#       stress-ng and fio beside tmpfs, the CAS counter at scale, a long fsx model test;
#       installs stress-ng and fio; takes about 15 minutes; prints tables of numbers
set -euo pipefail
cd "$(dirname "$0")/.."
long=0
if [ "${1:-}" = "--long" ]; then
  long=1
  shift
fi
bash scripts/setup.sh
if [ "$long" = 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
need=()
for p in stress-ng fio; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
HVFS_LONG=1 exec .venv/bin/python -m pytest -q -s tests/long "$@"
