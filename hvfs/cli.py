"""``hvfs`` command line: mount, umount, status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from .config import ConnectOptions, load_config, load_context
from .errors import HvfsError

__all__ = ["main"]

log = logging.getLogger("hvfs")


def _env(name: str) -> str | None:
    v = os.environ.get(name)
    return v or None


def connect_options(a: argparse.Namespace) -> ConnectOptions:
    """Flags, then NATS_* variables, then the nats CLI context (ADR-21)."""
    ctx = load_context(a.context or _env("NATS_CONTEXT"))
    url = a.server or _env("NATS_URL") or ctx.get("url")
    servers = [s.strip() for s in url.split(",") if s.strip()] if url else []
    return ConnectOptions(
        servers=servers,
        user=a.user or _env("NATS_USER") or ctx.get("user"),
        password=a.password or _env("NATS_PASSWORD") or ctx.get("password"),
        token=a.token or _env("NATS_TOKEN") or ctx.get("token"),
        creds=a.creds or _env("NATS_CREDS") or ctx.get("creds"),
        nkey=a.nkey or _env("NATS_NKEY") or ctx.get("nkey"),
        tls_ca=a.tlsca or _env("NATS_CA") or ctx.get("ca"),
        tls_cert=a.tlscert or _env("NATS_CERT") or ctx.get("cert"),
        tls_key=a.tlskey or _env("NATS_KEY") or ctx.get("key"),
        timeout=a.timeout,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hvfs", description="Mount NATS JetStream KV buckets as files.")
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("mount", help="mount NATS at MOUNTPOINT (foreground unless --daemon)")
    m.add_argument("mountpoint")
    m.add_argument("--server", "-s", help="NATS URL(s), comma separated (env NATS_URL); "
                   "none: start an embedded nats-server on loopback")
    m.add_argument("--context", help="nats CLI context name (env NATS_CONTEXT)")
    m.add_argument("--creds", help="credentials file (env NATS_CREDS)")
    m.add_argument("--nkey", help="nkey seed file (env NATS_NKEY)")
    m.add_argument("--user", help="user name (env NATS_USER)")
    m.add_argument("--password", help="password (env NATS_PASSWORD)")
    m.add_argument("--token", help="token (env NATS_TOKEN)")
    m.add_argument("--tlsca", help="TLS CA file (env NATS_CA)")
    m.add_argument("--tlscert", help="TLS client certificate (env NATS_CERT)")
    m.add_argument("--tlskey", help="TLS client key (env NATS_KEY)")
    m.add_argument("--timeout", type=float, default=2.0, help="bound on every NATS call, seconds (default 2)")
    m.add_argument("--config", help="mount config file (YAML): paths bound to buckets, streams and work "
                   "queues, with formats, schemas and TTLs; missing buckets and streams are created "
                   "(docs/config.md, examples/fleet.yml)")
    m.add_argument("--store", help="store dir of the embedded nats-server (default ~/.local/share/hvfs/nats)")
    m.add_argument("--read-only", action="store_true", help="refuse every write with EROFS")
    m.add_argument("--writer", help="name put on every write (header Hvfs-Writer, user.hvfs.writer); "
                   "default: the config's writer, else the NATS user, else the host name")
    m.add_argument("--allow-other", action="store_true", default=None,
                   help="let other users see the mount (default: on when run as root)")
    m.add_argument("--no-notify", action="store_true",
                   help="no kernel notifier: no inotify events for remote changes, no kernel caching")
    m.add_argument("--daemon", action="store_true", help="run in the background once mounted")
    m.add_argument("--log-file", help="log here (default: stderr; with --daemon: STORE/../hvfs.log)")
    m.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="unmount MOUNTPOINT (fusermount3 -u)")
    u.add_argument("mountpoint")

    s = sub.add_parser("status", help="print the mount's connection state and counters")
    s.add_argument("mountpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "mount":
            return _mount(a)
        if a.cmd == "umount":
            return _umount(a.mountpoint)
        if a.cmd == "status":
            return _status(a.mountpoint)
    except HvfsError as e:
        print(f"hvfs: {e.reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _mount(a: argparse.Namespace) -> int:
    from .mount import MountOptions, check_mountpoint, default_store_dir

    connect = connect_options(a)
    config = load_config(a.config)
    check_mountpoint(a.mountpoint)
    if a.daemon:
        return _daemonize(a)
    logging.basicConfig(
        level=getattr(logging, a.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=a.log_file,
    )
    logging.getLogger("nats").setLevel(logging.CRITICAL)  # reported through our callbacks
    allow_other = a.allow_other if a.allow_other is not None else os.geteuid() == 0
    opts = MountOptions(
        mountpoint=os.path.abspath(a.mountpoint), connect=connect, config=config,
        store_dir=a.store or default_store_dir(), read_only=a.read_only, allow_other=allow_other,
        notify=not a.no_notify, writer=a.writer,
    )

    def ready() -> None:
        if a.ready_fd is not None:
            os.write(a.ready_fd, b"ok\n")
            os.close(a.ready_fd)
            a.ready_fd = None

    import trio

    from .mount import run_mount

    try:
        trio.run(run_mount, opts, ready)
    except HvfsError as e:
        if a.ready_fd is not None:
            os.write(a.ready_fd, f"{e.reason}\n".encode())
        raise
    return 0


def _daemonize(a: argparse.Namespace) -> int:
    """Re-run in a new session, return once the child reports the mount ready."""
    r, w = os.pipe()
    argv = [a for a in sys.argv[1:] if a != "--daemon"]
    if argv and argv[0] != "mount":
        argv = ["mount", *argv]
    log_file = a.log_file or str(Path(a.store or _default_store()).parent / "hvfs.log")
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    argv += ["--ready-fd", str(w), "--log-file", log_file] if not a.log_file else ["--ready-fd", str(w)]
    proc = subprocess.Popen([sys.executable, "-m", "hvfs", *argv], pass_fds=(w,), start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    deadline = time.monotonic() + 60
    msg = b""
    with os.fdopen(r, "rb") as f:
        msg = f.readline()
    if msg.strip() == b"ok":
        print(f"hvfs: mounted {a.mountpoint} (pid {proc.pid}, log {log_file})")
        return 0
    if not msg:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        msg = f"mount process exited ({proc.returncode}); see {log_file}".encode()
    print(f"hvfs: {msg.decode(errors='replace').strip()}", file=sys.stderr)
    return 2


def _default_store() -> str:
    from .mount import default_store_dir

    return default_store_dir()


def _umount(mountpoint: str) -> int:
    r = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"hvfs: {r.stderr.strip() or 'fusermount3 failed'}", file=sys.stderr)
        return 2
    return 0


def _status(mountpoint: str) -> int:
    path = Path(mountpoint) / ".hvfs" / "status"
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        print(f"hvfs: {mountpoint}: not an hvfs mount or not answering ({e.strerror})", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2))
    return 0 if doc.get("connected") else 1
