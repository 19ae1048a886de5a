"""Start-up and shut-down of one mount: server, store, core, FUSE, signals.

One trio nursery owns every task; the only threads are the NATS loop (owned
by the store), the kernel notifier and, with ``--metrics``, the metrics HTTP
server (trio's worker threads also run the settler's git I/O). Everything started here is stopped
here, in reverse order, also when start-up fails half way.

The kernel binding is pyfuse3 (libfuse3's low-level API, requests as trio tasks) unless
``--binding mfusepy`` (``hvfs.fuse.mfuse``: libfuse's high-level API, for FUSE-T on macOS).
That binding adds one thread, mfusepy's blocking loop, started and stopped here; its libfuse
worker threads submit every request to this trio loop. It has no kernel notifier.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gc
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .config import ConnectOptions, MountConfig
from .errors import HvfsError, Invalid, Unavailable
from .server import EmbeddedServer
from .store.nats import NatsStore
from .vfs.core import Vfs
from .vfs.provider import called_back

__all__ = ["BINDINGS", "MountOptions", "check_mountpoint", "fd_mountpoint", "run_mount"]

#: a binding's loop: mounted(), then serve until stopped (state["stop"]) or unmounted
ServeFuse = Callable[[Callable[[], None]], Awaitable[None]]
#: the kernel bindings ``--binding`` chooses from; the first is the default
BINDINGS = ("pyfuse3", "mfusepy")

log = logging.getLogger(__name__)


@dataclass
class MountOptions:
    mountpoint: str
    connect: ConnectOptions
    config: MountConfig = field(default_factory=lambda: MountConfig())
    store_dir: str | None = None
    read_only: bool = False
    allow_other: bool = False
    entry_timeout: float = 60.0
    attr_timeout: float = 60.0
    notify: bool = True
    debug_fuse: bool = False
    writer: str | None = None  # --writer; None: the config's, else the NATS user, else the host name
    metrics: str | None = None  # --metrics HOST:PORT: serve Prometheus text there while mounted
    binding: str = "pyfuse3"  # --binding: pyfuse3 (libfuse3 low-level) or mfusepy (high-level, FUSE-T)
    state_dir: str | None = None  # --state-dir: spool and conflicts; None: default_state_dir(mountpoint)
    offline: bool = False  # --offline: writes spool while NATS is away, reads of known keys from memory
    cache: str = "fresh"  # --cache: fresh (a get per open) or watch (opens served from the watch)


def fd_mountpoint(path: str) -> int | None:
    """N when ``path`` is ``/dev/fd/N``: a /dev/fuse descriptor a privileged helper opened and
    mounted (libfuse serves it as is, and mounts nothing; docs/deployment.md)."""
    head, _, n = path.rpartition("/")
    return int(n) if head == "/dev/fd" and n.isdigit() else None


def check_mountpoint(path: str, binding: str = "pyfuse3") -> None:
    fd = fd_mountpoint(path)
    if fd is not None and binding != "pyfuse3":
        raise HvfsError(f"{path}: --binding {binding} cannot serve a /dev/fd/N mount (libfuse2's "
                        "high-level API mounts by itself); use the default binding")
    if fd is not None:
        # No directory to check and no /dev/fuse needed: the mount exists; the fd must be its device.
        try:
            st = os.fstat(fd)
        except OSError:
            raise HvfsError(f"{path}: file descriptor {fd} is not open (hvfs must inherit it)") from None
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (10, 229):
            raise HvfsError(f"{path}: file descriptor {fd} is not /dev/fuse")
        return
    detach_dead_mount(path)
    p = Path(path)
    if not p.exists():
        raise HvfsError(f"{path}: mountpoint does not exist")
    if not p.is_dir():
        raise HvfsError(f"{path}: mountpoint is not a directory")
    if os.path.ismount(path):
        raise HvfsError(f"{path}: something is already mounted there")
    if binding == "mfusepy" and sys.platform == "darwin":
        return  # FUSE-T has no /dev/fuse: it serves the mount over NFS (docs/macos.md)
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise HvfsError("/dev/fuse is not available (FUSE missing or no permission)")


def _mountinfo(path: str) -> tuple[str, str] | None:
    """(device "major:minor", filesystem type) of the mount at ``path``, the topmost if
    several; read from /proc, not stat(): the mount may not answer (or answer ourselves)."""
    target = os.path.abspath(path)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if parts[4] == target and " - " in line:
                    found = (parts[2], line.split(" - ", 1)[1].split()[0])
    except (OSError, IndexError):
        return None
    return found


def detach_dead_mount(path: str) -> None:
    """An hvfs mount whose daemon died (kill -9, OOM) answers ENOTCONN and the kernel
    cannot hand it to a new process: detach it (lazily) so a new mount can take its place.
    Only hvfs mounts are touched, and only dead ones."""
    info = _mountinfo(path)
    if info is None or info[1] != "fuse.hvfs":
        return
    try:
        # A listing is always a request to the daemon (a stat may be answered from the
        # kernel's cached attributes even when the daemon is gone).
        os.listdir(path)
        return  # it answers: alive (check_mountpoint reports it as mounted)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
    r = subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True, text=True)
    if r.returncode != 0:
        raise HvfsError(f"{path}: a dead hvfs mount is there and cannot be detached "
                        f"({r.stderr.strip() or 'fusermount3 failed'}); run fusermount3 -u -z {path}")
    log.warning("%s: detached a dead hvfs mount (its daemon had died)", path)


def creds_user(path: str | None) -> str | None:
    """The user name in a NATS credentials file (its JWT's ``name``), if any."""
    if not path:
        return None
    try:
        text = Path(path).read_text()
        jwt = text.split("-----BEGIN NATS USER JWT-----")[1].split("------END")[0].strip()
        body = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (OSError, IndexError, ValueError):
        return None
    name = claims.get("name") if isinstance(claims, dict) else None
    return name if isinstance(name, str) and name else None


def default_writer(opts: MountOptions) -> str:
    """Who writes: --writer, the config's ``writer``, the NATS user, the host name."""
    for w in (opts.writer, opts.config.writer, opts.connect.user, creds_user(opts.connect.creds)):
        if w:
            return w
    return socket.gethostname() or "hvfs"


def fuse_connection(mountpoint: str) -> int | None:
    """The FUSE connection number of a mount (its device minor), from mountinfo."""
    info = _mountinfo(mountpoint)
    if info is None or not info[1].startswith("fuse"):
        return None
    try:
        return int(info[0].split(":")[1])
    except (IndexError, ValueError):
        return None


def abort_fuse_connection(conn: int | None) -> None:
    """Fail every request pending on the connection (fusectl ``abort``)."""
    if conn is None:
        return
    try:
        with open(f"/sys/fs/fuse/connections/{conn}/abort", "w") as f:
            f.write("1")
    except OSError as e:
        log.warning("cannot abort FUSE connection %s: %s", conn, e)


def default_state_dir(mountpoint: str) -> str:
    """``$XDG_STATE_HOME/hvfs/<mountpoint>`` (``~/.local/state`` by default): one per
    mountpoint, so a mount started again on it finds what the last one left."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "hvfs", _state_name(mountpoint))


def fallback_state_dir(mountpoint: str) -> str:
    """Where state goes when the home directory cannot hold it (a container user
    without one): ``/var/tmp`` keeps files across reboots, unlike ``/tmp``."""
    return os.path.join("/var/tmp", f"hvfs-{os.getuid()}", _state_name(mountpoint))


def _state_name(mountpoint: str) -> str:
    return os.path.abspath(mountpoint).strip("/").replace("=", "=3D").replace("/", "=2F") or "=2F"


def lock_state_dir(path: str, stack: contextlib.ExitStack | contextlib.AsyncExitStack) -> Path:
    """Make and lock the state directory: one mount at a time uses it (the lock goes with
    the process, so a killed daemon leaves it free)."""
    import fcntl

    d = Path(path)
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)  # bytes of users' writes: the owner's only
        fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise Invalid(f"state directory {d}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        held = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise Invalid(f"state directory {d} is in use by another hvfs mount (pid {held or '?'}); "
                      "give each mount its own --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    stack.callback(os.close, fd)
    return d


def _state_dir(opts: MountOptions) -> str:
    """--state-dir, else the default; if the default cannot be made, the fallback (said in the log)."""
    if opts.state_dir:
        return opts.state_dir
    path = default_state_dir(opts.mountpoint)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        other = fallback_state_dir(opts.mountpoint)
        log.warning("state directory %s: %s; using %s (give --state-dir)", path, e.strerror or e, other)
        return other
    return path


def default_store_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "hvfs", "nats")


async def run_mount(opts: MountOptions, ready: Callable[[], None] | None = None) -> None:
    """Mount and serve until SIGINT/SIGTERM or ``hvfs umount``; raise HvfsError on bad start.

    A signal during start-up cancels it (everything started so far is
    stopped); once mounted, it ends the binding's loop and unmounts.
    """
    check_mountpoint(opts.mountpoint, opts.binding)
    # A big bucket's index and its watch batches allocate millions of objects: collecting
    # the young generation every 700 of them costs more than the index itself (bench_fresh).
    gc.set_threshold(100_000, 50, 1000)
    if opts.notify and fd_mountpoint(opts.mountpoint) is not None:
        # The notifier repeats changes through the mountpoint's path, which a /dev/fd mount hides.
        log.info("%s: no kernel notifier (the mountpoint's path is unknown)", opts.mountpoint)
        opts.notify = False
    state: dict[str, object] = {"mounted": False}
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(_signals, outer.cancel_scope, state)
            await _serve(opts, ready, state)
            outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A failed start-up is one HvfsError with a reason: report that, not a group.
        reason = group.subgroup(lambda e: isinstance(e, HvfsError))
        if reason is not None:
            first: BaseException = reason
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        raise


async def _serve(opts: MountOptions, ready: Callable[[], None] | None, state: dict[str, object]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        connect = opts.connect
        if not connect.servers:
            server = EmbeddedServer(opts.store_dir or default_store_dir())
            # Started from this (main) thread: the server gets PDEATHSIG with it.
            server.start()
            stack.callback(server.stop)
            connect = connect.model_copy(update={"servers": [server.url]})
            log.info("embedded nats-server on %s, store %s, sync_interval %s", server.url, server.store_dir,
                     server.sync)
        state_dir = lock_state_dir(_state_dir(opts), stack)
        store = NatsStore(connect)
        stack.push_async_callback(store.close)
        await store.start()
        core = Vfs(store, opts.config, read_only=opts.read_only, max_payload=store.max_payload,
                   writer=default_writer(opts), state_dir=state_dir, offline=opts.offline,
                   cache=opts.cache)
        stack.push_async_callback(core.close)
        await core.start()
        if opts.binding == "mfusepy":
            serve_fuse = _mfusepy(opts, core, state)
        else:
            serve_fuse = _pyfuse3(opts, core, state, stack)
        if opts.metrics:
            _serve_metrics(stack, core, opts.metrics)
        settle = opts.config.settle
        settler = None
        if settle is not None and settle.repo is not None:
            from .settle import Settler

            try:
                settler = Settler(store, opts.config, settle)
            except Invalid:
                if settle.interval > 0:  # a periodic settler with nothing to settle: say so at start
                    raise
            else:
                core.extra_status["settle"] = settler.status
        async with trio.open_nursery() as nursery:
            await nursery.start(core.resolver.run)
            await nursery.start(core.offline.run)
            if core.kv_dir is not None or core.streams.bound:
                await nursery.start(core.poll_buckets)
            if settler is not None and settle is not None and settle.interval > 0:
                await nursery.start(settler.run, settle.interval)

            def mounted() -> None:
                log.info("mounted %s", opts.mountpoint)
                state["mounted"] = True
                if ready is not None:
                    ready()

            await serve_fuse(mounted)
            nursery.cancel_scope.cancel()
        log.info("unmounting %s", opts.mountpoint)


def _mfusepy(opts: MountOptions, core: Vfs, state: dict[str, object]) -> ServeFuse:
    """The mfusepy binding (hvfs.fuse.mfuse): mounts when served, unmounts before it returns."""
    from .fuse.mfuse import MfuseMount, fuse_options

    if opts.notify:
        log.info("%s: no kernel notifier with --binding mfusepy (caches last at most 1 s)", opts.mountpoint)
    stop = trio.Event()
    state["stop"] = stop.set

    def abort(conn: int | None) -> bool:
        if conn is None or not os.path.exists(f"/sys/fs/fuse/connections/{conn}/abort"):
            return False  # no fusectl (macOS, or not mounted in this container)
        abort_fuse_connection(conn)
        return True

    fuse = MfuseMount(core, opts.mountpoint, fuse_options(opts.allow_other, opts.debug_fuse),
                      connection=lambda: fuse_connection(opts.mountpoint), abort=abort)

    async def serve(mounted: Callable[[], None]) -> None:
        await fuse.serve(mounted, stop)

    return serve


def _pyfuse3(opts: MountOptions, core: Vfs, state: dict[str, object],
             stack: contextlib.AsyncExitStack) -> ServeFuse:
    """The pyfuse3 binding and its kernel notifier: mounted here, unmounted by ``stack``."""
    import pyfuse3

    from .fuse.notifier import Notifier
    from .fuse.ops import Operations

    state["stop"] = pyfuse3.terminate
    if not opts.notify:
        # Without the notifier nothing invalidates the kernel's caches.
        opts.entry_timeout = opts.attr_timeout = 0.0
    ops = Operations(core, entry_timeout=opts.entry_timeout, attr_timeout=opts.attr_timeout)
    options = set(pyfuse3.default_options)
    options |= {"fsname=hvfs", "subtype=hvfs"}
    if opts.allow_other:
        options.add("allow_other")
    if opts.debug_fuse:
        options.add("debug")
    try:
        pyfuse3.init(ops, opts.mountpoint, options)
    except RuntimeError as e:
        raise Unavailable(f"{opts.mountpoint}: cannot mount: {e}") from e
    unmounted = False

    def close_fuse() -> None:
        nonlocal unmounted
        if not unmounted:
            unmounted = True
            pyfuse3.close(unmount=True)

    stack.callback(close_fuse)
    conn = fuse_connection(opts.mountpoint)
    if opts.notify:
        info = _mountinfo(opts.mountpoint)
        notifier = Notifier(opts.mountpoint, core.echo, core.listed, core.metrics,
                            device=info[0] if info is not None else None)
        notifier.start()
        # stops before the unmount above; may abort a request it left pending
        stack.callback(notifier.stop, lambda: abort_fuse_connection(conn))

        async def drain() -> None:
            """Let the notifier finish the change it repeats while requests are still
            answered: once the loop has stopped, its request would wait forever."""
            await called_back(notifier.stop_soon, 2.0)

        state["drain"] = drain
        core.tree.listeners.append(notifier.enqueue)
        core.tree.tellers.append(notifier.when_told)

    async def serve(mounted: Callable[[], None]) -> None:
        mounted()
        await pyfuse3.main()

    return serve


def _serve_metrics(stack: contextlib.AsyncExitStack, core: Vfs, addr: str) -> None:
    """The Prometheus endpoint: prometheus_client's server thread, stopped at unmount."""
    from .metrics import serve_http

    try:
        server = serve_http(core.metrics, addr)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise Invalid(f"--metrics {addr}: cannot serve metrics there: {why}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()

    stack.callback(stop)
    log.info("metrics on http://%s/metrics", addr)


async def _signals(startup: trio.CancelScope, state: dict[str, object]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            stop = state.get("stop")
            if state["mounted"] and callable(stop):
                drain = state.get("drain")
                if callable(drain):
                    await drain()
                stop()
            else:
                startup.cancel()
            return
