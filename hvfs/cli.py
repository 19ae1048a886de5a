"""``hvfs`` command line: mount, umount, status, settle, restore, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .config import ConnectOptions, MountConfig, SettleConfig, load_config, load_context
from .errors import HvfsError, Invalid

__all__ = ["main"]

log = logging.getLogger("hvfs")
T = TypeVar("T")


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
    _connection_flags(m)
    m.add_argument("--config", help="mount config file (YAML; env HVFS_CONFIG): paths bound to buckets, "
                   "streams and work queues, with formats, schemas and TTLs; missing buckets and streams "
                   "are created (docs/config.md, examples/fleet.yml)")
    m.add_argument("--store", help="store dir of the embedded nats-server (default ~/.local/share/hvfs/nats)")
    m.add_argument("--read-only", action="store_true", help="refuse every write with EROFS")
    m.add_argument("--writer", help="name put on every write (header Hvfs-Writer, user.hvfs.writer; "
                   "env HVFS_WRITER); default: the config's writer, else the NATS user, else the host name")
    m.add_argument("--allow-other", action="store_true", default=None,
                   help="let other users see the mount (default: on when run as root)")
    m.add_argument("--no-notify", action="store_true",
                   help="no kernel notifier: no inotify events for remote changes, no kernel caching")
    m.add_argument("--binding", choices=["pyfuse3", "mfusepy"], default="pyfuse3",
                   help="kernel binding: pyfuse3 (libfuse3, default) or mfusepy (libfuse's high-level "
                   "API: FUSE-T on macOS; no kernel notifier, caches last 1 s; docs/macos.md)")
    m.add_argument("--daemon", action="store_true", help="run in the background once mounted")
    m.add_argument("--log-file", help="log here (default: stderr; with --daemon: STORE/../hvfs.log)")
    m.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    m.add_argument("--log-json", action="store_true",
                   help="log one JSON object per line (time, level, logger, message, extra fields)")
    m.add_argument("--metrics", metavar="ADDR", help="serve Prometheus metrics at http://ADDR/metrics "
                   "while mounted, e.g. 127.0.0.1:9464 (default: off; docs/operations.md)")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="unmount MOUNTPOINT (fusermount3 -u)")
    u.add_argument("mountpoint")

    s = sub.add_parser("status", help="print the mount's connection state and counters")
    s.add_argument("mountpoint")

    st = sub.add_parser("settle", help="settle the config's chosen paths to git once; print the commit "
                        "id or 'nothing changed' (docs/settle.md)")
    _repo_flags(st, "mount config file with a settle: section (docs/settle.md)",
                "branch to commit to (overrides settle.branch; default main)")
    st.add_argument("--author", help="'Name <email>' of the commit (overrides settle.author)")
    st.add_argument("--message", help="the commit message's first line (overrides settle.message)")
    st.add_argument("--remote", help="repository path or URL to push to (overrides settle.remote)")

    r = sub.add_parser("restore", help="write a settled tree back into NATS with compare-and-set "
                       "(docs/settle.md)")
    _repo_flags(r, "mount config file: the bindings (and settle: section) the tree was settled with",
                "the settle branch (overrides settle.branch)")
    r.add_argument("--rev", help="commit, branch or tag to restore (default: the settle branch)")
    r.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    r.add_argument("--writer", help="name put on every write (default: the config's writer, else hvfs-restore)")

    d = sub.add_parser("doctor", help="check FUSE, the NATS server and a config's buckets and streams; "
                       "one line per check with how to fix it (docs/operations.md)")
    _connection_flags(d)
    d.add_argument("--config", help="mount config file: check that its buckets and streams exist "
                   "or can be made, with matching settings (nothing is created)")
    d.add_argument("--allow-other", action="store_true", help="check what --allow-other needs too")
    return p


def _repo_flags(p: argparse.ArgumentParser, config_help: str, branch_help: str) -> None:
    """What ``settle`` and ``restore`` share: the paths, the connection, the repository."""
    p.add_argument("paths", nargs="*", metavar="PATH", help="only these settled paths (default: all)")
    _connection_flags(p)
    p.add_argument("--config", help=config_help)
    p.add_argument("--store", help="store dir of the embedded nats-server when no server is given")
    p.add_argument("--repo", help="the git repository (overrides settle.repo)")
    p.add_argument("--branch", help=branch_help)
    p.add_argument("--dir", help="directory inside the repository (overrides settle.dir)")


def _connection_flags(m: argparse.ArgumentParser) -> None:
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


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "mount":
            return _mount(a)
        if a.cmd == "umount":
            return _umount(a.mountpoint)
        if a.cmd == "status":
            return _status(a.mountpoint)
        if a.cmd == "settle":
            return _settle(a)
        if a.cmd == "restore":
            return _restore(a)
        if a.cmd == "doctor":
            from .doctor import doctor

            return doctor(a, connect_options(a))
    except HvfsError as e:
        print(f"hvfs: {e.reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _mount(a: argparse.Namespace) -> int:
    from .mount import MountOptions, check_mountpoint, default_store_dir

    connect = connect_options(a)
    a.config = a.config or _env("HVFS_CONFIG")
    a.writer = a.writer or _env("HVFS_WRITER")
    config = load_config(a.config)
    check_mountpoint(a.mountpoint, a.binding)
    if a.metrics:
        from .metrics import parse_listen

        try:
            parse_listen(a.metrics)
        except ValueError as e:
            raise Invalid(str(e)) from None
    if a.daemon:
        return _daemonize(a)
    from .logs import setup

    setup(a.log_level, a.log_file, a.log_json)
    logging.getLogger("nats").setLevel(logging.CRITICAL)  # reported through our callbacks
    allow_other = a.allow_other if a.allow_other is not None else os.geteuid() == 0
    opts = MountOptions(
        mountpoint=os.path.abspath(a.mountpoint), connect=connect, config=config,
        store_dir=a.store or default_store_dir(), read_only=a.read_only, allow_other=allow_other,
        notify=not a.no_notify, writer=a.writer, metrics=a.metrics, binding=a.binding,
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
    # macOS (FUSE-T) has no fusermount3: umount(8) is how a user unmounts there.
    cmd = ["umount", mountpoint] if sys.platform == "darwin" else ["fusermount3", "-u", mountpoint]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"hvfs: {r.stderr.strip() or cmd[0] + ' failed'}", file=sys.stderr)
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


# -- settle and restore ----------------------------------------------------------------------


def _settle_config(config: MountConfig, a: argparse.Namespace) -> SettleConfig:
    """The config's settle section with the command line's flags over it (validated the same way)."""
    base = config.settle.model_dump(exclude_unset=True) if config.settle is not None else {}
    for flag in ("repo", "branch", "dir", "author", "message", "remote"):
        v = getattr(a, flag, None)
        if v is not None:
            base[flag] = v
    base.pop("interval", None)  # the command settles once
    from pydantic import ValidationError

    from .codec import validation_reason

    try:
        st = SettleConfig.model_validate(base)
    except ValidationError as e:
        raise Invalid(f"settle: {validation_reason(e)}") from None
    try:
        config.check_settle(st)
    except ValueError as e:
        raise Invalid(f"settle: {e}") from None
    if st.repo is None:
        raise Invalid("settle: no repository: give --repo, or settle.repo in the config (docs/settle.md)")
    return st


async def _with_store(a: argparse.Namespace, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Connect like ``hvfs mount`` (an embedded server on --store when none is given), run fn(store)."""
    import contextlib

    from .store.nats import NatsStore

    connect = connect_options(a)
    with contextlib.ExitStack() as stack:
        if not connect.servers:
            from .server import EmbeddedServer

            server = EmbeddedServer(a.store or _default_store())
            server.start()
            stack.callback(server.stop)
            connect = connect.model_copy(update={"servers": [server.url]})
        store = NatsStore(connect)
        try:
            await store.start()
            return await fn(store)
        finally:
            # our own close is no news ("nats: disconnected" is the store's warning for it)
            logging.getLogger("hvfs.store.nats").setLevel(logging.ERROR)
            await store.close()


def _settle(a: argparse.Namespace) -> int:
    import trio

    from .settle import Outcome, Settler

    config = load_config(a.config)
    st = _settle_config(config, a)
    logging.getLogger("nats").setLevel(logging.CRITICAL)

    async def run(store: Any) -> Outcome:
        return await Settler(store, config, st, a.paths).settle()

    out = trio.run(_with_store, a, run)
    print(out.commit or "nothing changed")
    if out.note:
        print(f"hvfs: {out.note}", file=sys.stderr)
    return 0


def _restore(a: argparse.Namespace) -> int:
    import trio

    from .settle import RestoreLine, restore

    config = load_config(a.config)
    if not config.bindings:
        raise Invalid("restore: the config binds no KV path; give --config, the file the tree was settled with")
    st = _settle_config(config, a)
    writer = a.writer or config.writer or "hvfs-restore"
    logging.getLogger("nats").setLevel(logging.CRITICAL)

    async def run(store: Any) -> list[RestoreLine]:
        return await restore(store, config, st, rev=a.rev, only=a.paths, dry_run=a.dry_run, writer=writer)

    lines = trio.run(_with_store, a, run)
    counts: dict[str, int] = {}
    for line in lines:
        print(line)
        counts[line.action] = counts.get(line.action, 0) + 1
    print("hvfs: " + (", ".join(f"{n} {k}" for k, n in counts.items()) or "nothing to restore"), file=sys.stderr)
    return 0
