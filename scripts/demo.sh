#!/usr/bin/env bash
# Set up, then mount a small demo fleet at ${HVFS_MOUNT:-/mnt/fleet} on the
# embedded nats-server, in the background. `.venv/bin/hvfs umount /mnt/fleet` ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MNT=${HVFS_MOUNT:-/mnt/fleet}
mkdir -p "$MNT"
mountpoint -q "$MNT" && fusermount3 -u "$MNT"
.venv/bin/hvfs mount "$MNT" --config examples/fleet.yml --daemon
cd "$MNT"
# Seed the fleet the way agents would, with plain shell tools.
mkdir -p claims/is-42 threads/is-42
echo "issue: is-42" > queues/ready.yml
[ -e agents/ag-7.yml ] || echo "agent: ag-7
state: idle" > agents/ag-7.yml
set -o noclobber
echo "agent: ag-7" > claims/is-42/owner.yml 2>/dev/null || echo "(claim already held)"
set +o noclobber
echo "demo fleet mounted at $MNT:"
find "$MNT" -path "$MNT/.hvfs" -prune -o -print | sed "s|^$MNT|  |"
echo "claim owner: $(cat "$MNT/claims/is-42/owner.yml") (revision $(getfattr --only-values -n user.hvfs.revision "$MNT/claims/is-42/owner.yml"))"
echo "Unmount with: .venv/bin/hvfs umount $MNT"
