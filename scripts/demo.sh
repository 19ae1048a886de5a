#!/usr/bin/env bash
# Set up, then mount the demo fleet (examples/fleet.yml: the seed's whole layout)
# at ${HVFS_MOUNT:-/mnt/fleet} on the embedded nats-server, in the background.
# `.venv/bin/hvfs umount /mnt/fleet` ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MNT=${HVFS_MOUNT:-/mnt/fleet}
mkdir -p "$MNT"
mountpoint -q "$MNT" && fusermount3 -u "$MNT"
# Its own store: buckets an older demo made without TTLs would stop the mount (docs/config.md).
STORE=${HVFS_DEMO_STORE:-$HOME/.local/share/hvfs/demo-fleet}
.venv/bin/hvfs mount "$MNT" --config examples/fleet.yml --writer ag-7 --store "$STORE" --daemon
cd "$MNT"
# Seed the fleet the way agents would, with plain shell tools (docs/recipes.md).
[ -e issues/is-42.yml ] || printf 'title: Try hvfs\npriority: 1\n' > issues/is-42.yml
printf 'status: working\ncurrent_issue: is-42\n' > agents/ag-7.yml   # present for 30 s (TTL)
mkdir -p claims/is-42 threads/is-42 queues/_global
echo "issues: [is-42]" > queues/_global/ready.yml
(set -o noclobber; echo "agent_id: ag-7" > claims/is-42/owner.yml) 2>/dev/null || echo "(claim already held)"
echo "body: the demo fleet is up" > threads/is-42/new
echo "demo fleet mounted at $MNT:"
ls "$MNT"
echo "--- claims/is-42/owner.yml (revision $(getfattr --only-values -n user.hvfs.revision claims/is-42/owner.yml)," \
     "written by $(getfattr --only-values -n user.hvfs.writer claims/is-42/owner.yml)):"
cat claims/is-42/owner.yml
echo "Unmount with: .venv/bin/hvfs umount $MNT"
