"""Every form of NATS authentication hvfs takes, against real nats-servers configured for it.

Token, user and password, nkey seed file, credentials file (operator mode: the operator,
account and user JWTs are made here with ``nkeys``) and TLS with a client certificate (a CA
and certificates made here with the ``openssl`` command), each given by a flag, a NATS_*
variable, the config's ``nats:`` section or a nats CLI context. A mount writes a file, an
authenticated client reads it back. Wrong credentials end ``hvfs mount`` with 2 and a one-line
reason, and no secret is in the command line of a mount process (nor of a --daemon child).

One server per form, shared by the module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest

from hvfs.server import EmbeddedServer

from .helpers import Mount, RawNats, wait_for

TOKEN = "tok-9f3c1d7e"
PASSWORD = "pw-5b8e2a41"
#: what a failing mount must report, within this many seconds (its --timeout is 2)
FAIL_WITHIN = 8.0


def _need_fuse() -> None:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")


@pytest.fixture(autouse=True)
def _no_ambient_nats(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NATS_* variable or nats context of the machine leaks into a test."""
    for var in list(os.environ):
        if var.startswith("NATS_") or var in ("HVFS_CONFIG",):
            monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


# -- keys, JWTs, certificates --------------------------------------------------------------------


@dataclass(frozen=True)
class NKey:
    seed: bytes
    public: str

    @staticmethod
    def new(prefix: int) -> NKey:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return NKey(seed, nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(signer: NKey, subject: str, name: str, claims: dict[str, Any], exp: int | None = None) -> str:
    """A NATS JWT (v2) for ``subject``, signed by ``signer``: what nsc would write."""
    body: dict[str, Any] = {"iat": int(time.time()), "iss": signer.public, "name": name, "sub": subject,
                            "nats": {**claims, "version": 2}}
    if exp is not None:
        body["exp"] = exp
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()) \
        .rstrip(b"=").decode()
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    return f"{head}.{payload}.{_b64(signer.sign(f'{head}.{payload}'.encode()))}"


def account_jwt(operator: NKey, account: NKey, name: str, jetstream: bool = True) -> str:
    """An account without limits; with ``jetstream``, JetStream enabled (storage limits set)."""
    limits: dict[str, Any] = {k: -1 for k in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")}
    if jetstream:
        limits.update({k: -1 for k in ("mem_storage", "disk_storage", "streams", "consumer")})
    return jwt(operator, account.public, name, {"type": "account", "limits": {**limits, "wildcards": True}})


def creds_file(path: Path, account: NKey, name: str, exp: int | None = None) -> Path:
    """A credentials file of a new user of ``account`` (as ``nsc generate creds`` writes it)."""
    user = NKey.new(nkeys.PREFIX_BYTE_USER)
    token = jwt(account, user.public, name,
                {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}, exp=exp)
    path.write_text(f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
                    f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n")
    path.chmod(0o600)
    return path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}")
    return cert, key


def make_cert(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    """A certificate and key signed by ``ca``, with the extensions ``ext`` (openssl's syntax)."""
    cert, key, csr, extfile = (d / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    extfile.write_text(ext)
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")), "-out", str(cert), "-days", "2", "-extfile", str(extfile))
    return cert, key


# -- servers -------------------------------------------------------------------------------------


@dataclass
class AuthServer:
    """A nats-server configured for one form, and how an authorized client connects to it."""

    server: EmbeddedServer
    dir: Path
    connect: dict[str, Any]  # nats.connect keywords of an authorized client
    files: dict[str, Path]

    @property
    def url(self) -> str:
        return self.server.url

    def raw(self) -> RawNats:
        return AuthRaw(self.url, **self.connect)


class AuthRaw(RawNats):
    """RawNats with credentials."""

    def __init__(self, url: str, **connect: Any) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self.run(nats.connect(url, allow_reconnect=False, **connect))
        self.js = self.nc.jetstream()


def _start(d: Path, conf: str) -> EmbeddedServer:
    d.mkdir(parents=True, exist_ok=True)
    (d / "server.conf").write_text(conf)
    srv = EmbeddedServer(d / "store", extra_args=["-c", str(d / "server.conf")])
    srv.start()
    return srv


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    d = tmp_path_factory.mktemp("token")
    srv = _start(d, f'authorization {{ token: "{TOKEN}" }}\n')
    yield AuthServer(srv, d, {"token": TOKEN}, {})
    srv.stop()


@pytest.fixture(scope="module")
def users_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """User alice with a password, and a user known by its nkey only."""
    d = tmp_path_factory.mktemp("users")
    user = NKey.new(nkeys.PREFIX_BYTE_USER)
    seed = d / "user.nk"
    seed.write_bytes(user.seed + b"\n")
    seed.chmod(0o600)
    srv = _start(d, "authorization { users: [\n"
                    f'  {{ user: alice, password: "{PASSWORD}" }}\n'
                    f"  {{ nkey: {user.public} }}\n]}}\n")
    yield AuthServer(srv, d, {"user": "alice", "password": PASSWORD}, {"nkey": seed})
    srv.stop()


@pytest.fixture(scope="module")
def operator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """Operator mode: the operator, a system account and account APP (JetStream on), preloaded."""
    d = tmp_path_factory.mktemp("operator")
    op = NKey.new(nkeys.PREFIX_BYTE_OPERATOR)
    sys_acc = NKey.new(nkeys.PREFIX_BYTE_ACCOUNT)
    app = NKey.new(nkeys.PREFIX_BYTE_ACCOUNT)
    op_jwt = jwt(op, op.public, "hvfs-test", {"type": "operator", "system_account": sys_acc.public})
    srv = _start(d, f"operator: {op_jwt}\n"
                    f"system_account: {sys_acc.public}\n"
                    "resolver: MEMORY\n"
                    "resolver_preload: {\n"
                    f"  {sys_acc.public}: {account_jwt(op, sys_acc, 'SYS', jetstream=False)}\n"
                    f"  {app.public}: {account_jwt(op, app, 'APP')}\n"
                    "}\n")
    creds = creds_file(d / "agent.creds", app, "agent-7")
    # the same user's forms the server refuses: an expired JWT, an account it does not know
    expired = creds_file(d / "expired.creds", app, "agent-old", exp=int(time.time()) - 60)
    stranger = creds_file(d / "stranger.creds", NKey.new(nkeys.PREFIX_BYTE_ACCOUNT), "stranger")
    yield AuthServer(srv, d, {"user_credentials": str(creds)},
                     {"creds": creds, "expired": expired, "stranger": stranger})
    srv.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """TLS only, with client certificates verified against the test CA."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca(d, "ca")
    scert, skey = make_cert(d, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                             "extendedKeyUsage=serverAuth\n")
    ccert, ckey = make_cert(d, "client", ca, "extendedKeyUsage=clientAuth\n")
    other_ca = make_ca(d, "other-ca")
    other_cert, other_key = make_cert(d, "other-client", other_ca, "extendedKeyUsage=clientAuth\n")
    srv = _start(d, f'tls {{\n  cert_file: "{scert}"\n  key_file: "{skey}"\n  ca_file: "{ca[0]}"\n'
                    "  verify: true\n  timeout: 2\n}\n")
    ctx = ssl.create_default_context(cafile=str(ca[0]))
    ctx.load_cert_chain(str(ccert), str(ckey))
    yield AuthServer(srv, d, {"tls": ctx}, {"ca": ca[0], "cert": ccert, "key": ckey, "other_ca": other_ca[0],
                                            "other_cert": other_cert, "other_key": other_key})
    srv.stop()


# -- helpers ---------------------------------------------------------------------------------------

_counter = itertools.count()


def _roundtrip(m: Mount, auth: AuthServer) -> None:
    """Write a file through the mount; an authorized client reads it back."""
    raw = auth.raw()
    try:
        bucket = f"auth{os.getpid()}_{next(_counter)}"
        raw.create_bucket(bucket)
        d = m.path("kv", bucket)
        wait_for(d.is_dir, 5, f"kv/{bucket} in the mount")
        (d / "hello").write_bytes(b"through the mount\n")
        assert raw.value(bucket, "hello") == b"through the mount\n"
    finally:
        raw.close()


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


_SEED = re.compile(rb"S[UAO][A-Z2-7]{50,}")  # an nkey seed: a user's, an account's, an operator's


def _no_secret(*texts: str | bytes) -> None:
    for t in texts:
        b = t.encode() if isinstance(t, str) else t
        for secret in (TOKEN.encode(), PASSWORD.encode()):
            assert secret not in b, f"a secret in {b[-400:]!r}"
        assert not _SEED.search(b), f"an nkey seed in {b[-400:]!r}"


def _mounted(tmp_path: Path, auth: AuthServer, *extra: str) -> Mount:
    _need_fuse()
    return Mount(tmp_path / "m", auth.url, *extra).start()


def _context(tmp_path: Path, name: str, **settings: str) -> None:
    d = tmp_path / "xdg" / "nats" / "context"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(settings))
    (d / f"{name}.json").chmod(0o600)


# -- each form, from each source -------------------------------------------------------------------


def test_token_flag_is_not_in_the_process_list(token_server: AuthServer, tmp_path: Path) -> None:
    m = _mounted(tmp_path, token_server, "--token", TOKEN)
    try:
        assert m.proc is not None
        cmdline = _cmdline(m.proc.pid)
        assert b"--token\0***\0" in cmdline, cmdline
        _roundtrip(m, token_server)
        _no_secret(cmdline, (m.path(".hvfs", "status")).read_bytes())
    finally:
        m.stop()
    _no_secret(m.log_text())


def test_password_in_a_url_is_not_in_the_process_list(users_server: AuthServer, tmp_path: Path) -> None:
    """The last --server wins (Mount passes one first): its password is masked like --password's."""
    url = users_server.url.replace("nats://", f"nats://alice:{PASSWORD}@")
    m = _mounted(tmp_path, users_server, f"--server={url}")
    try:
        assert m.proc is not None
        cmdline = _cmdline(m.proc.pid)
        assert b"\0--server=***\0" in cmdline, cmdline
        _roundtrip(m, users_server)
        status = m.path(".hvfs", "status").read_bytes()
        _no_secret(cmdline, status)
        assert b"nats://***@127.0.0.1" in status, status
    finally:
        m.stop()
    _no_secret(m.log_text())


def test_token_from_a_context(token_server: AuthServer, tmp_path: Path) -> None:
    """The CLI's selected context (context.txt), no flag naming it."""
    _context(tmp_path, "fleet", token=TOKEN)
    (tmp_path / "xdg" / "nats" / "context.txt").write_text("fleet\n")
    m = _mounted(tmp_path, token_server)
    try:
        _roundtrip(m, token_server)
    finally:
        m.stop()


def test_user_and_password_from_the_environment(users_server: AuthServer, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_USER", "alice")
    monkeypatch.setenv("NATS_PASSWORD", PASSWORD)
    m = _mounted(tmp_path, users_server)
    try:
        _roundtrip(m, users_server)
        status = json.loads(m.path(".hvfs", "status").read_text())
        assert status["connected"], status
    finally:
        m.stop()
    _no_secret(m.log_text())


def test_password_in_the_config_outranks_the_context(users_server: AuthServer, tmp_path: Path) -> None:
    """Setting by setting: the context's user, the config's password over the context's."""
    _context(tmp_path, "ops", user="alice", password="not-this-one")
    cfg = tmp_path / "mount.yml"
    cfg.write_text(f"nats:\n  context: ops\n  password: {PASSWORD}\n")
    cfg.chmod(0o600)
    m = _mounted(tmp_path, users_server, "--config", str(cfg))
    try:
        _roundtrip(m, users_server)
    finally:
        m.stop()


def test_nkey_seed_file_from_the_config_relative_to_it(users_server: AuthServer, tmp_path: Path) -> None:
    cfg = users_server.dir / "nkey-mount.yml"  # beside user.nk
    cfg.write_text("nats:\n  nkey: user.nk\n")
    m = _mounted(tmp_path, users_server, "--config", str(cfg))
    try:
        _roundtrip(m, users_server)
    finally:
        m.stop()
    _no_secret(m.log_text())


def test_creds_file_from_a_context(operator_server: AuthServer, tmp_path: Path) -> None:
    """Operator mode; the writer defaults to the user's name in the JWT."""
    _context(tmp_path, "prod", creds=str(operator_server.files["creds"]))
    m = _mounted(tmp_path, operator_server, "--context", "prod")
    try:
        _roundtrip(m, operator_server)
        written = next(m.path("kv").glob("auth*/hello"))
        assert os.getxattr(written, "user.hvfs.writer") == b"agent-7"
    finally:
        m.stop()
    _no_secret(m.log_text())


def test_creds_file_from_the_environment(operator_server: AuthServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_CREDS", str(operator_server.files["creds"]))
    m = _mounted(tmp_path, operator_server)
    try:
        _roundtrip(m, operator_server)
    finally:
        m.stop()
    _no_secret(m.log_text())


def test_tls_client_certificate_from_flags(tls_server: AuthServer, tmp_path: Path) -> None:
    f = tls_server.files
    m = _mounted(tmp_path, tls_server, "--tlsca", str(f["ca"]), "--tlscert", str(f["cert"]),
                 "--tlskey", str(f["key"]))
    try:
        _roundtrip(m, tls_server)
    finally:
        m.stop()
    _no_secret(m.log_text())


def test_tls_client_certificate_from_the_environment(tls_server: AuthServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    f = tls_server.files
    for var, key in (("NATS_CA", "ca"), ("NATS_CERT", "cert"), ("NATS_KEY", "key")):
        monkeypatch.setenv(var, str(f[key]))
    m = _mounted(tmp_path, tls_server)
    try:
        _roundtrip(m, tls_server)
    finally:
        m.stop()


def test_tls_from_the_config_and_a_context(tls_server: AuthServer, tmp_path: Path) -> None:
    """The config's tls_ca and the context's cert and key (the nats CLI's names there)."""
    f = tls_server.files
    _context(tmp_path, "edge", cert=str(f["cert"]), key=str(f["key"]))
    cfg = tmp_path / "mount.yml"
    cfg.write_text(f"nats:\n  context: edge\n  tls_ca: {f['ca']}\n")
    m = _mounted(tmp_path, tls_server, "--config", str(cfg))
    try:
        _roundtrip(m, tls_server)
    finally:
        m.stop()


def test_daemon_gets_the_password_in_its_environment_not_its_arguments(users_server: AuthServer,
                                                                       tmp_path: Path) -> None:
    _need_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    p = subprocess.run([sys.executable, "-m", "hvfs", "mount", str(mp), "--server", users_server.url,
                        "--user", "alice", f"--password={PASSWORD}", "--daemon", "--log-file", str(log)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    pid = int(p.stdout.split("(pid ")[1].split(",")[0])
    try:
        m = Mount(mp, users_server.url)
        _roundtrip(m, users_server)
        _no_secret(_cmdline(pid), p.stdout, p.stderr)
        assert b"--user\0alice\0" in _cmdline(pid)
        with open(f"/proc/{pid}/environ", "rb") as f:  # our own process: readable by us only
            assert f"NATS_PASSWORD={PASSWORD}".encode() in f.read().split(b"\0")
    finally:
        os.kill(pid, 15)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or b"Z" in open(f"/proc/{pid}/stat", "rb").read()
                 .rsplit(b")", 1)[1][:3], 15, "the daemon to end")
        if mp.is_mount():
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
    _no_secret(log.read_text())


# -- refused: a one-line reason, exit 2, soon ------------------------------------------------------


def _refused(tmp_path: Path, url: str, *extra: str, env: dict[str, str] | None = None) -> str:
    """Run a mount that must fail; its one-line reason."""
    _need_fuse()
    mp = tmp_path / "m"
    mp.mkdir(exist_ok=True)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "hvfs", "mount", str(mp), "--server", url, *extra],
                       capture_output=True, text=True, timeout=FAIL_WITHIN + 20, env={**os.environ, **(env or {})})
    took = time.monotonic() - t0
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert took < FAIL_WITHIN, f"took {took:.1f}s: {p.stderr}"
    lines = [line for line in p.stderr.splitlines() if line.startswith("hvfs: ")]
    assert len(lines) == 1, p.stderr
    _no_secret(p.stdout, p.stderr)
    assert not mp.is_mount()
    return lines[0]


def test_wrong_password_is_refused(users_server: AuthServer, tmp_path: Path) -> None:
    why = _refused(tmp_path, users_server.url, "--user", "alice", "--password", PASSWORD + "x")
    assert why == f"hvfs: cannot connect to NATS at {users_server.url}: authorization violation " \
                  "(user alice and password)"


def test_wrong_token_is_refused(token_server: AuthServer, tmp_path: Path) -> None:
    why = _refused(tmp_path, token_server.url, env={"NATS_TOKEN": TOKEN[::-1]})
    assert why.endswith(": authorization violation (token)"), why


def test_no_credentials_is_refused(token_server: AuthServer, tmp_path: Path) -> None:
    why = _refused(tmp_path, token_server.url)
    assert why.endswith(": authorization violation (no credentials given)"), why


def test_unknown_nkey_is_refused(users_server: AuthServer, tmp_path: Path) -> None:
    seed = tmp_path / "other.nk"
    seed.write_bytes(NKey.new(nkeys.PREFIX_BYTE_USER).seed)
    why = _refused(tmp_path, users_server.url, "--nkey", str(seed))
    assert why.endswith(f": authorization violation (nkey seed file {seed})"), why


def test_expired_creds_are_refused_with_the_expiry(operator_server: AuthServer, tmp_path: Path) -> None:
    creds = operator_server.files["expired"]
    why = _refused(tmp_path, operator_server.url, "--creds", str(creds))
    assert f": authorization violation (credentials file {creds}: its user JWT expired at " in why, why


def test_creds_of_an_unknown_account_are_refused(operator_server: AuthServer, tmp_path: Path) -> None:
    creds = operator_server.files["stranger"]
    why = _refused(tmp_path, operator_server.url, "--creds", str(creds))
    assert why.endswith(f": authorization violation (credentials file {creds})"), why


def test_missing_creds_file_is_named(operator_server: AuthServer, tmp_path: Path) -> None:
    why = _refused(tmp_path, operator_server.url, "--creds", str(tmp_path / "nope.creds"))
    assert why == f"hvfs: credentials file {tmp_path / 'nope.creds'}: No such file or directory", why


@pytest.mark.parametrize("flag,content,reason", [
    ("--nkey", "SUAGARBAGE\n", "cannot connect to NATS at {url}: nkey seed file {path}: invalid seed"),
    ("--creds", "hello\n", "credentials file {path}: no user JWT and nkey seed in it (what nsc generate creds writes)"),
    ("--tlscert", "hello\n", "TLS certificate {path}: not a PEM certificate and its key ("),
])
def test_unusable_file_is_named(users_server: AuthServer, tmp_path: Path, flag: str, content: str,
                                reason: str) -> None:
    path = tmp_path / "file"
    path.write_text(content)
    why = _refused(tmp_path, users_server.url, flag, str(path))
    assert why.startswith("hvfs: " + reason.format(url=users_server.url, path=path)), why


def test_untrusted_server_certificate_is_refused(tls_server: AuthServer, tmp_path: Path) -> None:
    f = tls_server.files
    why = _refused(tmp_path, tls_server.url, "--tlsca", str(f["other_ca"]), "--tlscert", str(f["cert"]),
                   "--tlskey", str(f["key"]))
    assert why.endswith(": TLS: the server's certificate is not trusted: unable to get local issuer "
                        "certificate (--tlsca: the CA that signed it)"), why


def test_missing_client_certificate_is_refused(tls_server: AuthServer, tmp_path: Path) -> None:
    why = _refused(tmp_path, tls_server.url, "--tlsca", str(tls_server.files["ca"]))
    assert why.endswith(": TLS: the server requires a client certificate (--tlscert and --tlskey)"), why


def test_client_certificate_of_another_ca_is_refused(tls_server: AuthServer, tmp_path: Path) -> None:
    f = tls_server.files
    why = _refused(tmp_path, tls_server.url, "--tlsca", str(f["ca"]), "--tlscert", str(f["other_cert"]),
                   "--tlskey", str(f["other_key"]))
    assert why.endswith(f": TLS: the server refused the client certificate {f['other_cert']} "
                        "(TLSV1_ALERT_UNKNOWN_CA)"), why


def test_tls_files_and_a_server_without_tls_send_no_credentials(token_server: AuthServer,
                                                                tls_server: AuthServer, tmp_path: Path) -> None:
    """nats-py would connect in the clear (and send the token); hvfs refuses first."""
    why = _refused(tmp_path, token_server.url, "--token", TOKEN, "--tlsca", str(tls_server.files["ca"]))
    assert why == f"hvfs: cannot connect to NATS at {token_server.url}: TLS: {token_server.url} does not use " \
                  "TLS, and TLS files were given (credentials are not sent in the clear)", why
