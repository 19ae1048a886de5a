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
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import HvfsError, Invalid

if TYPE_CHECKING:  # imported where used: pydantic takes a second to import, and until
    # main() has hidden the secrets of the command line (_hide_secret_args) ps shows them
    from .config import ConnectOptions, MountConfig, NatsConfig, SettleConfig

__all__ = ["main"]

log = logging.getLogger("hvfs")
T = TypeVar("T")


def _env(name: str) -> str | None:
    v = os.environ.get(name)
    return v or None


#: Each connection setting: ConnectOptions field, flag (argparse dest), variable, nats context key.
#: (``servers`` and the context name are picked apart: see connect_options.)
_SETTINGS = (
    ("user", "user", "NATS_USER", "user"),
    ("password", "password", "NATS_PASSWORD", "password"),
    ("token", "token", "NATS_TOKEN", "token"),
    ("creds", "creds", "NATS_CREDS", "creds"),
    ("nkey", "nkey", "NATS_NKEY", "nkey"),
    ("tls_ca", "tlsca", "NATS_CA", "ca"),
    ("tls_cert", "tlscert", "NATS_CERT", "cert"),
    ("tls_key", "tlskey", "NATS_KEY", "key"),
)
_CONTEXT_FILES = ("creds", "nkey", "ca", "cert", "key")


def connect_options(a: argparse.Namespace) -> ConnectOptions:
    """Setting by setting: flags, then NATS_* variables, then the config's ``nats:`` section, then
    the nats CLI context (ADR-21) that --context, NATS_CONTEXT, ``nats.context`` or context.txt names.

    Also takes the secrets the command line gave out of this process's listing (_hide_secret_args).
    """
    from .config import ConnectOptions, load_context

    _hide_secret_args(a)
    section = _config_nats(a)
    ctx = load_context(a.context or _env("NATS_CONTEXT") or section.context)
    for k in _CONTEXT_FILES:
        if k in ctx:
            ctx[k] = os.path.expanduser(ctx[k])  # as the nats CLI reads them
    url = a.server or _env("NATS_URL") or (",".join(section.url) if section.url else None) or ctx.get("url")
    servers = [s.strip() for s in url.split(",") if s.strip()] if url else []
    picked = {field: getattr(a, flag) or _env(var) or getattr(section, field) or ctx.get(key)
              for field, flag, var, key in _SETTINGS}
    return ConnectOptions(servers=servers, timeout=a.timeout, **picked)


def _config_nats(a: argparse.Namespace) -> NatsConfig:
    from .config import NatsConfig, load_config

    """The ``nats:`` section of the config the command reads (--config; for mount also HVFS_CONFIG)."""
    path = getattr(a, "config", None) or (_env("HVFS_CONFIG") if getattr(a, "cmd", None) == "mount" else None)
    if not path:
        return NatsConfig()
    try:
        return load_config(path).nats
    except HvfsError:
        if getattr(a, "cmd", None) == "doctor":
            return NatsConfig()  # doctor reports a bad config as one of its checks
        raise


#: A secret the command line gave: the flag's option strings, its value, its variable.
_Secret = tuple[tuple[str, ...], str, str]


def _secrets_given(a: argparse.Namespace) -> list[_Secret]:
    """The secrets on the command line, from the parsed flags."""
    out: list[_Secret] = []
    if getattr(a, "password", None):
        out.append((("--password",), a.password, "NATS_PASSWORD"))
    if getattr(a, "token", None):
        out.append((("--token",), a.token, "NATS_TOKEN"))
    if getattr(a, "server", None) and "@" in a.server:  # nats://user:secret@host
        out.append((("--server", "-s"), a.server, "NATS_URL"))
    return out


def _flag_form(arg: str, names: tuple[str, ...]) -> int:
    """How many arguments ``arg`` and its value take if ``arg`` is one of the flags ``names``
    (2: ``--flag VALUE``; 1: ``--flag=VALUE`` or ``-sVALUE``), else 0. A long flag may be
    abbreviated: argparse takes any unambiguous prefix."""
    head, eq, _ = arg.partition("=")
    for name in names:
        if name.startswith("--"):
            if len(head) > 2 and name.startswith(head):
                return 1 if eq else 2
        elif arg == name:
            return 2
        elif arg.startswith(name):
            return 1
    return 0


def _secret_args(args: list[str], secrets: list[_Secret]) -> list[tuple[int, int, str]]:
    """Where the secret flags are in ``args`` (hvfs's arguments, without the program): (index,
    length, the flag's value)."""
    out = []
    i = 0
    while i < len(args) and args[i] != "--":
        n, value = next(((n, v) for names, v, _ in secrets if (n := _flag_form(args[i], names))), (0, ""))
        if n:
            out.append((i, min(n, len(args) - i), value))
        i += max(n, 1)
    return out


def _value_head(arg: str, n: int) -> int:
    """How much of the argument holding a flag's value is not the value: 0 for ``--flag VALUE``'s
    VALUE; the flag and '=' of ``--flag=VALUE`` and ``-s=VALUE``; the ``-s`` of ``-sVALUE``."""
    if n == 2:
        return 0
    if arg.startswith("--"):
        return arg.index("=") + 1
    return 3 if arg[2:3] == "=" else 2


def _hide_secret_args(a: argparse.Namespace) -> None:
    """Overwrite the secrets the command line holds (--password, --token, a URL with a password) in
    this process's own argument memory, so that ``ps`` and /proc/PID/cmdline show ``***`` instead.

    Linux only (/proc/self/stat says where the arguments are); elsewhere, a warning. Python keeps
    its own copy (sys.argv), which --daemon reads to start the serving process without them.
    """
    if getattr(a, "_secrets_hidden", False):
        return  # once: after the first, the listing no longer matches sys.argv
    a._secrets_hidden = True
    secrets = _secrets_given(a)
    if not secrets:
        return
    args = sys.argv[1:]
    masks = []
    for i, n, value in _secret_args(args, secrets):
        j = i + n - 1  # the argument holding the value: the next one, or this one after its flag
        head = _value_head(args[j], n)
        if args[j][head:] == value:  # ``a`` was parsed from sys.argv (not so in a test)
            masks.append((j, head))
    if masks and not _overwrite_args(masks):
        flags = ", ".join(names[0] for names, _, _ in secrets)
        print(f"hvfs: warning: cannot hide the secret of {flags} from the process list here; give it in "
              "a NATS_* variable or a file instead (docs/security.md)", file=sys.stderr)


def _overwrite_args(masks: list[tuple[int, int]]) -> bool:
    """In this process's command line as the kernel shows it, put ``***`` for the arguments
    (index in sys.argv[1:], how many characters of it to keep); False if that memory is not found."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
        with open("/proc/self/cmdline", "rb") as f:
            shown = f.read()
    except (OSError, IndexError, ValueError):
        return False
    if end <= start or ctypes.string_at(start, end - start) != shown:
        return False  # not the memory the kernel shows (already rewritten?): leave it alone
    parts = shown.rstrip(b"\0").split(b"\0")
    ours = [os.fsencode(x) for x in sys.argv[1:]]
    skip = len(parts) - len(ours)  # the interpreter and its options come first
    if skip < 0 or parts[skip:] != ours:
        return False
    for j, keep in masks:
        head = len(os.fsencode(sys.argv[1 + j][:keep]))
        parts[skip + j] = parts[skip + j][:head] + b"*" * min(3, len(parts[skip + j]) - head)  # never longer
    new = b"\0".join(parts) + b"\0"
    ctypes.memmove(start, new.ljust(len(shown), b"\0"), len(shown))
    return True


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
    m.add_argument("--offline", action="store_true",
                   help="keep working while NATS is away: writes are spooled durably and applied "
                   "(compare-and-swap) when it is back, reads of recently read keys come from memory "
                   "(docs/offline.md)")
    m.add_argument("--cache", choices=("fresh", "watch"), default="fresh",
                   help="fresh (default): every open() of a KV file gets the key's latest value from "
                   "NATS; watch: an open of a key whose latest revision, as this mount's watch has it, "
                   "was read before is served from memory (64 MiB, least recently read dropped first), "
                   "current up to the watch's lag (docs/consistency.md)")
    m.add_argument("--state-dir", help="local state of this mount (env HVFS_STATE_DIR): the spool of "
                   "written bytes not yet in NATS, and .hvfs/conflicts/, kept across restarts "
                   "(default ~/.local/state/hvfs/<mountpoint>; docs/errors.md)")
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
    m.add_argument("--server", "-s", help="NATS URL(s), comma separated (env NATS_URL; the config's "
                   "nats.url); none: start an embedded nats-server on loopback")
    m.add_argument("--context", help="nats CLI context name (env NATS_CONTEXT)")
    m.add_argument("--creds", help="credentials file (env NATS_CREDS)")
    m.add_argument("--nkey", help="nkey seed file (env NATS_NKEY)")
    m.add_argument("--user", help="user name (env NATS_USER)")
    m.add_argument("--password", help="password (env NATS_PASSWORD, preferred: docs/security.md)")
    m.add_argument("--token", help="token (env NATS_TOKEN, preferred: docs/security.md)")
    m.add_argument("--tlsca", help="TLS CA file (env NATS_CA)")
    m.add_argument("--tlscert", help="TLS client certificate (env NATS_CERT)")
    m.add_argument("--tlskey", help="TLS client key (env NATS_KEY)")
    m.add_argument("--timeout", type=float, default=2.0, help="bound on every NATS call, seconds (default 2)")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    _hide_secret_args(a)  # first thing: the window in which ps shows them is the start-up's
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
    a.state_dir = a.state_dir or _env("HVFS_STATE_DIR")
    from .config import load_config

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
        state_dir=os.path.abspath(a.state_dir) if a.state_dir else None, offline=a.offline,
        cache=a.cache,
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
    """Re-run in a new session, return once the child reports the mount ready.

    The child gets the command line's secrets (--password, --token, a URL with a password) in its
    environment (NATS_PASSWORD, NATS_TOKEN, NATS_URL), never in its arguments: a flag outranks
    its variable, so without the flag the variable holds the same place.
    """
    r, w = os.pipe()
    argv = [x for x in sys.argv[1:] if x != "--daemon"]
    env = dict(os.environ)
    secrets = _secrets_given(a)
    for i, n, _ in reversed(_secret_args(argv, secrets)):
        del argv[i:i + n]
    for _, value, var in secrets:
        env[var] = value
    if argv and argv[0] != "mount":
        argv = ["mount", *argv]
    log_file = a.log_file or str(Path(a.store or _default_store()).parent / "hvfs.log")
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    argv += ["--ready-fd", str(w), "--log-file", log_file] if not a.log_file else ["--ready-fd", str(w)]
    proc = subprocess.Popen([sys.executable, "-m", "hvfs", *argv], pass_fds=(w,), start_new_session=True, env=env,
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
        from .config import SettleConfig

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

    from .config import load_config
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

    from .config import load_config
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
