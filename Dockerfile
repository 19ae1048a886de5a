# hvfs as a container: `hvfs mount /mnt/fleet` in the foreground, configured by environment
# (mount-scripts/entrypoint.sh: HVFS_MOUNT, NATS_URL, NATS_CREDS, HVFS_CONFIG, HVFS_WRITER,
# HVFS_READ_ONLY, ...). docs/deployment.md.
#
# Privilege: FUSE needs /dev/fuse in the container (--device /dev/fuse) and mount(2), which needs
# CAP_SYS_ADMIN (--cap-add SYS_ADMIN; Docker's default AppArmor profile also denies mount, hence
# --security-opt apparmor:unconfined). Neither is needed when a privileged helper opens
# /dev/fuse, mounts it and hands the descriptor over: HVFS_MOUNT=/dev/fd/N (docs/deployment.md).
#
#   docker build -t hvfs .
#   docker run --rm --device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor:unconfined \
#     -e NATS_URL=nats://nats:4222 -e HVFS_CONFIG=/opt/hvfs/examples/fleet.yml \
#     -v /mnt/fleet:/mnt/fleet:rshared hvfs

FROM python:3.11-slim-bookworm AS build
WORKDIR /opt/hvfs
COPY . .
# The same steps as a host install (README): system packages, .venv with hvfs, the pinned nats-server.
RUN bash scripts/setup.sh && rm -rf /root/.cache

FROM python:3.11-slim-bookworm
# Run time needs fuse3 (libfuse3, fusermount3) only; the compilers stay in the build stage.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fuse3 \
 && rm -rf /var/lib/apt/lists/*
# Same path as in the build stage: the venv's scripts and its editable install point here.
COPY --from=build /opt/hvfs /opt/hvfs
ENV PATH=/opt/hvfs/.venv/bin:$PATH \
    HVFS_MOUNT=/mnt/fleet
# Bind a host directory here with propagation rshared to share the mount (compose.yaml).
RUN mkdir -p /mnt/fleet
# Healthy while the mount answers and NATS is connected (`hvfs status` exits 1 when it is not);
# timeout: a request to a wedged mount must not hang the check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD timeout 4 hvfs status "$HVFS_MOUNT" >/dev/null || exit 1
# hvfs unmounts cleanly on SIGTERM. Each NATS call is bounded by --timeout (2 s), so a stop needs a
# few seconds at most: Docker's default 10 s grace is enough; give more (docker stop -t 30,
# compose stop_grace_period) with a larger --timeout. After the grace Docker sends SIGKILL, and the
# mount is left behind answering ENOTCONN until the entrypoint's next start detaches it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/hvfs/mount-scripts/entrypoint.sh"]
