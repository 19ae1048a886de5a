#!/bin/sh
# The container's entrypoint: `hvfs mount $HVFS_MOUNT` in the foreground, configured by
# environment (docs/deployment.md):
#   HVFS_MOUNT     mountpoint (default /mnt/fleet)
#   NATS_URL       NATS server(s), comma separated; unset: an embedded nats-server (demo only)
#   NATS_CREDS     credentials file; also NATS_CONTEXT, NATS_NKEY, NATS_USER, NATS_PASSWORD,
#                  NATS_TOKEN, NATS_CA, NATS_CERT, NATS_KEY (read by hvfs itself)
#   HVFS_CONFIG    mount config file (--config); HVFS_WRITER: writer name (--writer)
#   HVFS_READ_ONLY=1  --read-only;  HVFS_STORE: --store of the embedded server
# Arguments are passed on to `hvfs mount` after these.
set -eu
MNT=${HVFS_MOUNT:-/mnt/fleet}
mkdir -p "$MNT" 2>/dev/null || true
# A daemon that died leaves its mount behind, answering ENOTCONN ("Transport endpoint is not
# connected") to everything, and hvfs refuses a mountpoint with something mounted on it:
# detach the dead mount (lazily: a process may still hold a file in it) before mounting again.
if grep -q " $MNT fuse" /proc/mounts && ! timeout 2 stat "$MNT" >/dev/null 2>&1; then
  echo "hvfs entrypoint: detaching the dead mount at $MNT" >&2
  fusermount3 -uz "$MNT" || umount -l "$MNT" || true
fi
set -- mount "$MNT" "$@"
[ "${HVFS_READ_ONLY:-0}" = 1 ] && set -- "$@" --read-only
[ -n "${HVFS_STORE:-}" ] && set -- "$@" --store "$HVFS_STORE"
# exec: hvfs is the container's main process and gets SIGTERM itself (it unmounts on it).
exec hvfs "$@"
