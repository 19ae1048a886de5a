"""Settlement to git and restore (docs/settle.md) on a real nats-server.

``hvfs settle`` / ``hvfs restore`` as commands, ``Settler`` in process on a real
``NatsStore``, the periodic settler inside a real mount. Every repository is read
back with dulwich and with the git CLI (``git show``, ``git log``, ``git fsck``):
what hvfs writes is an ordinary repository. Each test has its own buckets and
streams (the session's server is shared).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from dulwich.repo import Repo

from hvfs.codec import Codec, Context
from hvfs.config import ConnectOptions, MountConfig, load_config
from hvfs.entities import Comment, Issue, Overlay
from hvfs.errors import Busy, HvfsError, Invalid, NotFound, Unavailable
from hvfs.server import EmbeddedServer
from hvfs.settle import Outcome, Settler
from hvfs.store.nats import NatsStore
from hvfs.vfs.layout import Layout

from .helpers import Mount, RawNats, publish, wait_for

ROOT = Path(__file__).resolve().parent.parent
_n = itertools.count()

ISSUE = Codec("yaml", Issue)
OVERLAY = Codec("yaml", Overlay)
COMMENT = Codec("yaml", Comment, line=True)


# -- helpers ---------------------------------------------------------------------------------


def git(*args: str, check: bool = True) -> str:
    r = subprocess.run(["git", *args], capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"git {' '.join(args)}: {r.stderr}")
    return r.stdout


def bare(path: Path) -> Path:
    git("init", "-q", "--bare", "-b", "main", str(path))
    return path


class Fleet:
    """A config of its own (fresh bucket and stream names), its layout made on a server."""

    def __init__(self, tmp: Path, server: EmbeddedServer, extra: str = "", repo: Path | None = None,
                 settle: str | None = None) -> None:
        self.tag = f"st{os.getpid()}x{next(_n)}"
        t = self.tag
        self.tmp, self.server = tmp, server
        self.repo = repo or bare(tmp / f"{t}.git")
        self.issues, self.ov, self.notes, self.agents = f"{t}_issues", f"{t}_ov", f"{t}_notes", f"{t}_agents"
        self.threads, self.log = f"{t}_threads", f"{t}_log"
        self.th, self.lg = f"{t}th", f"{t}lg"
        paths = settle if settle is not None else (
            "    - {path: issues}\n    - {path: overlays, policy: overlay}\n    - {path: notes}\n"
            "    - {path: threads, policy: digest}\n    - {path: log}\n    - {path: agents, policy: never}\n")
        self.text = f"""\
raw: false
bindings:
  - {{path: issues, kv: {self.issues}, format: yaml, schema: issue}}
  - {{path: overlays, kv: {self.ov}, format: yaml, schema: overlay, refs: {{issue_id: issues}}}}
  - {{path: notes, kv: {self.notes}}}
  - {{path: agents, kv: {self.agents}, format: yaml, schema: agent}}
streams:
  - {{path: threads, stream: {self.threads}, prefix: {self.th}, format: yaml, schema: comment}}
  - {{path: log, stream: {self.log}, prefix: {self.lg}}}
settle:
  repo: {self.repo}
{extra}  paths:
{paths}"""
        self.path = tmp / f"{t}.yml"
        self.path.write_text(self.text)
        self.config = load_config(self.path)
        assert self.config.settle is not None

        async def make(store: NatsStore) -> None:
            lay = Layout(store, self.config, "test")
            for b in self.config.bindings:
                await lay.bucket(b)
            for s in self.config.streams:
                await lay.stream(s)

        in_store(server.url, make)

    def with_(self, **settle: Any) -> MountConfig:
        """The same config with other settle settings."""
        assert self.config.settle is not None
        st = self.config.settle.model_copy(update=settle)
        return self.config.model_copy(update={"settle": st})


def in_store(url: str, fn: Any) -> Any:
    async def main() -> Any:
        store = NatsStore(ConnectOptions(servers=[url], timeout=5))
        await store.start()
        try:
            return await fn(store)
        finally:
            await store.close()

    return trio.run(main)


def settle(f: Fleet, config: MountConfig | None = None, only: tuple[str, ...] = ()) -> Outcome:
    config = config or f.config
    assert config.settle is not None
    return in_store(f.server.url, lambda store: Settler(store, config, config.settle, only).settle())


def hvfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hvfs", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def put_issue(raw: RawNats, f: Fleet, key: str, text: str) -> bytes:
    value = ISSUE.store(text.encode(), Context(key))
    raw.put(f.issues, key, value)
    return value


def comment(raw: RawNats, f: Fleet, issue: str, author: str, body: str, at: str) -> None:
    data = COMMENT.store(f"body: {json.dumps(body)}\ncreated_at: '{at}'\n".encode(),
                         Context("", [issue], writer=author))
    publish(raw, f"{f.th}.{issue}", data, headers={"Hvfs-Writer": author})


def show(repo: Path, rev: str, path: str) -> str:
    return git("--git-dir", str(repo), "show", f"{rev}:{path}")


def files(repo: Path, rev: str = "main") -> list[str]:
    return git("--git-dir", str(repo), "ls-tree", "-r", "--name-only", rev).split()


def trailers(repo: Path, rev: str, key: str) -> dict[str, int]:
    out = git("--git-dir", str(repo), "log", "-1", f"--format=%(trailers:key={key},valueonly)", rev)
    return {k: int(v) for k, _, v in (line.rpartition("=") for line in out.split())}


def last_seq(raw: RawNats, stream: str) -> int:
    return int(raw.run(raw.js.stream_info(stream)).state.last_seq)


# -- settle ------------------------------------------------------------------------------------


def test_first_settle_as_the_mount_shows_it(server, raw, tmp_path):
    f = Fleet(tmp_path, server)
    v1 = put_issue(raw, f, "is-1", "title: Fix the login page\nlabels: [ui]\n")
    put_issue(raw, f, "is-2", "title: Second\n")
    raw.put(f.notes, "a", b"A")
    raw.put(f.notes, "a.b", b"AB")  # a key that is also a directory: a/.value, as the mount shows it
    raw.put(f.notes, "x.y=2Etxt", b"dotted name")
    raw.put(f.agents, "ag-7", b'{"id":"ag-7"}')  # policy never
    comment(raw, f, "is-1", "ag-7", "on it", "2026-01-01T10:00:00Z")
    comment(raw, f, "is-1", "ag-9", "line one\nline two", "2026-01-01T10:05:00Z")
    publish(raw, f"{f.lg}.x", b"raw message")
    r = hvfs("settle", "--server", server.url, "--config", str(f.path))
    assert r.returncode == 0, r.stderr
    commit = r.stdout.strip()
    assert len(commit) == 40 and int(commit, 16)
    # read back with dulwich ...
    repo = Repo(str(f.repo))
    assert repo.refs[b"refs/heads/main"].decode() == commit
    tree = repo[repo[commit.encode()].tree]
    assert sorted(n for n, _, _ in tree.iteritems()) == [b"issues", b"log", b"notes", b"threads"]
    # ... and with git
    git("--git-dir", str(f.repo), "fsck", "--strict")
    assert files(f.repo) == ["issues/is-1.yml", "issues/is-2.yml", f"log/x/{last_seq(raw, f.log)}",
                             "notes/a/.value", "notes/a/b", "notes/x/y.txt", "threads/is-1.md"]
    assert show(f.repo, "main", "issues/is-1.yml").encode() == ISSUE.show(v1)[0]
    assert show(f.repo, "main", "notes/x/y.txt") == "dotted name"
    digest = show(f.repo, "main", "threads/is-1.md")
    first, second = digest.index("ag-7 \u00b7 2026-01-01T10:00:00Z"), digest.index("ag-9 \u00b7 2026-01-01T10:05:00Z")
    assert first < second and "\n\non it\n" in digest and "line one\nline two\n" in digest
    assert trailers(f.repo, "main", "Hvfs-Bucket-Revision") == {
        f.issues: 2, f.notes: 3, f.ov: 0}
    assert trailers(f.repo, "main", "Hvfs-Stream-Sequence") == {
        f.threads: last_seq(raw, f.threads), f.log: last_seq(raw, f.log)}
    log = git("--git-dir", str(f.repo), "log", "--format=%an <%ae>|%s", "main")
    assert log == "hvfs <hvfs@localhost>|hvfs: settle\n"
    # the same state again: no commit
    r = hvfs("settle", "--server", server.url, "--config", str(f.path))
    assert (r.returncode, r.stdout) == (0, "nothing changed\n"), r.stderr
    assert git("--git-dir", str(f.repo), "rev-list", "main").split() == [commit]


def test_incremental_settle_reads_only_what_changed(server, raw, tmp_path):
    f = Fleet(tmp_path, server)
    for i in range(1, 6):
        put_issue(raw, f, f"is-{i}", f"title: Issue {i}\n")
    raw.put(f.notes, "a.b", b"AB")
    first = settle(f)
    assert first.commit and first.read == 6
    rev1 = trailers(f.repo, "main", "Hvfs-Bucket-Revision")[f.issues]
    put_issue(raw, f, "is-1", "title: Issue 1, renamed\n")
    raw.delete(f.issues, "is-2")
    put_issue(raw, f, "is-6", "title: Six\n")
    raw.delete(f.notes, "a.b")
    out = settle(f)  # a new settler (as hvfs settle is): it reads from the commit's revisions
    assert out.commit and out.read == 4 and out.changed == 4, out
    rev2 = trailers(f.repo, "main", "Hvfs-Bucket-Revision")[f.issues]
    assert rev2 == rev1 + 3
    diff = git("--git-dir", str(f.repo), "diff", "--name-status", first.commit or "", out.commit or "")
    assert sorted(diff.splitlines()) == ["A\tissues/is-6.yml", "D\tissues/is-2.yml", "D\tnotes/a/b",
                                         "M\tissues/is-1.yml"]
    assert "Issue 1, renamed" in show(f.repo, "main", "issues/is-1.yml")
    again = settle(f)
    assert again.commit is None and again.read == 0 and again.head == out.commit
    # the same state gives the same tree, whatever history led there
    fresh = settle(f, f.with_(repo=str(bare(tmp_path / "fresh.git"))))
    assert fresh.commit and fresh.read == 7  # 5 keys, and the markers of the 2 deleted
    tree = git("--git-dir", str(f.repo), "rev-parse", "main^{tree}")
    assert git("--git-dir", str(tmp_path / "fresh.git"), "rev-parse", "main^{tree}") == tree


def test_digest_and_overlay_policies(server, raw, tmp_path):
    f = Fleet(tmp_path, server)
    put_issue(raw, f, "is-1", "title: One\n")
    put_issue(raw, f, "is-2", "title: Two\n")
    comment(raw, f, "is-1", "ag-7", "first", "2026-02-01T09:00:00Z")
    ov = OVERLAY.store(b"overlay_status: review\noverlay_assignee: ag-7\nsettle_fields: [status]\n",
                       Context("status", ["is-1"]))
    raw.put(f.ov, "is-1.status", ov)
    out = settle(f)
    assert out.commit
    issue = show(f.repo, "main", "issues/is-1.yml")
    assert "status: review\n" in issue and "assignee" not in issue  # only the settle_fields
    assert "status: open\n" in show(f.repo, "main", "issues/is-2.yml")
    assert not [p for p in files(f.repo) if p.startswith("overlays")]  # overlays apply, they do not settle
    # a later comment is appended to the thread's digest; the overlay's change re-renders its issue
    comment(raw, f, "is-1", "ag-9", "second", "2026-02-01T09:30:00Z")
    comment(raw, f, "is-2", "ag-9", "other thread", "2026-02-01T09:31:00Z")
    raw.put(f.ov, "is-1.status", OVERLAY.store(b"overlay_status: closed\nsettle_fields: [status]\n",
                                               Context("status", ["is-1"])))
    out = settle(f)
    assert out.commit and out.changed == 3, out
    assert "status: closed\n" in show(f.repo, "main", "issues/is-1.yml")
    digest = show(f.repo, "main", "threads/is-1.md")
    assert digest.index("#") < digest.index("first") < digest.index("second")
    assert digest.count("\n### #") == 2 and "ag-9 \u00b7 2026-02-01T09:30:00Z" in digest
    assert "other thread" in show(f.repo, "main", "threads/is-2.md")
    # a value the issue refuses is not applied; a deleted overlay gives the issue its own status back
    raw.delete(f.ov, "is-1.status")
    out = settle(f)
    assert out.commit and "status: open\n" in show(f.repo, "main", "issues/is-1.yml")
    # the issue changing under its overlay: the overlay's fields still apply
    raw.put(f.ov, "is-2.status", OVERLAY.store(b"overlay_status: blocked\nsettle_fields: [status]\n",
                                               Context("status", ["is-2"])))
    settle(f)
    put_issue(raw, f, "is-2", "title: Two, edited\n")
    out = settle(f)
    text = show(f.repo, "main", "issues/is-2.yml")
    assert out.commit and "Two, edited" in text and "status: blocked\n" in text


def test_push_to_a_bare_remote_two_hosts(server, raw, tmp_path):
    remote = bare(tmp_path / "remote.git")
    a = Fleet(tmp_path, server, extra=f"  remote: {remote}\n")
    put_issue(raw, a, "is-1", "title: One\n")
    raw.put(a.notes, "n", b"note")
    # host A settles issues, host B (another repository, the same remote) notes
    repo_b = bare(tmp_path / "b.git")
    cfg_b = a.with_(repo=str(repo_b))
    one = settle(a, only=("issues",))
    assert one.commit and one.pushed == "ok" and one.tries == 1
    assert git("--git-dir", str(remote), "rev-parse", "main").strip() == one.commit
    two = settle(a, cfg_b, only=("notes",))  # refused (the remote moved on), fetched, redone on top
    assert two.commit and two.tries == 2 and two.pushed == "ok", two
    assert git("--git-dir", str(remote), "rev-list", "main").split() == [two.commit, one.commit]
    assert git("--git-dir", str(repo_b), "rev-parse", "main").strip() == two.commit  # B's branch follows
    assert files(remote) == ["issues/is-1.yml", "notes/n"]
    # A again: its branch is behind the remote; the settlement lands on top of B's
    put_issue(raw, a, "is-1", "title: One again\n")
    three = settle(a, only=("issues",))
    assert three.commit and three.tries == 2
    assert git("--git-dir", str(remote), "rev-list", "main").split() == [three.commit, two.commit, one.commit]
    assert git("--git-dir", str(remote), "rev-list", "--merges", "main") == ""
    git("--git-dir", str(remote), "fsck", "--strict")


class _Racing(Settler):
    """A settler that lets another one commit between its reading NATS and moving the branch."""

    other: Settler | None = None

    async def _read(self, marks: Any) -> Any:
        reads = await super()._read(marks)
        if self.other is not None:
            other, self.other = self.other, None
            await other.settle()
        return reads


def test_two_settlers_on_one_repository(server, raw, tmp_path):
    f = Fleet(tmp_path, server)
    put_issue(raw, f, "is-1", "title: One\n")
    raw.put(f.notes, "n", b"note")
    assert f.config.settle is not None

    async def race(store: NatsStore) -> tuple[Outcome, Outcome]:
        st = f.config.settle
        assert st is not None
        a = _Racing(store, f.config, st, ["issues"])
        b = Settler(store, f.config, st, ["notes"])
        a.other = b
        out_a = await a.settle()
        assert b.last is not None
        return out_a, b.last  # type: ignore[return-value]

    out_a, last_b = in_store(server.url, race)
    assert out_a.tries == 2 and out_a.commit  # the branch moved under A: redone on top of B's commit
    assert git("--git-dir", str(f.repo), "rev-list", "main").split() == [out_a.commit, last_b["commit"]]
    assert files(f.repo) == ["issues/is-1.yml", "notes/n"]
    # two processes at once, on two paths: both commits survive, one line of history
    put_issue(raw, f, "is-1", "title: One, again\n")
    raw.put(f.notes, "n", b"note, again")
    args = [sys.executable, "-m", "hvfs", "settle", "--server", server.url, "--config", str(f.path)]
    procs = [subprocess.Popen([*args, p], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for p in ("issues", "notes")]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    made = {o.strip() for o, _ in outs}
    history = git("--git-dir", str(f.repo), "rev-list", "main").split()
    assert made <= set(history) and len(history) == 4 and len(made) == 2
    assert git("--git-dir", str(f.repo), "rev-list", "--merges", "main") == ""
    assert "One, again" in show(f.repo, "main", "issues/is-1.yml")
    assert show(f.repo, "main", "notes/n") == "note, again"


def test_periodic_settler_in_a_mount(server, raw, tmp_path):
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")
    f = Fleet(tmp_path, server, extra="  interval: 0.3\n  author: 'fleet <fleet@example.com>'\n")
    m = Mount(tmp_path / "m", server.url, "--config", str(f.path), "--writer", "ag-7").start()
    try:
        m.path("issues", "is-9.yml").write_bytes(b"title: Made in the mount\n")
        # (a shell's write of a new file is two revisions, the empty create and the content:
        # a settlement in between holds the empty file, the next one the content)
        wait_for(lambda: "issues/is-9.yml" in files(f.repo) and "Made in the mount" in show(
            f.repo, "main", "issues/is-9.yml") if git(
            "--git-dir", str(f.repo), "rev-parse", "--verify", "-q", "main", check=False) else False,
            10, "the settler's commit")
        # an overlay written in the mount changes the settled issue (the settler's overlay state is warm)
        os.makedirs(m.path("overlays", "is-9"), exist_ok=True)
        m.path("overlays", "is-9", "status.yml").write_bytes(b"overlay_status: review\nsettle_fields: [status]\n")
        wait_for(lambda: "status: review" in show(f.repo, "main", "issues/is-9.yml"), 10, "the overlay settled")
        head = git("--git-dir", str(f.repo), "rev-parse", "main").strip()

        def status() -> dict[str, Any]:
            return json.loads(m.path(".hvfs", "status").read_text())["settle"]

        st = wait_for(lambda: (s := status())["last"] and s["last"]["commit"] == head and s, 5, "status")
        assert st["repo"] == str(f.repo) and st["interval"] == 0.3 and st["last"]["error"] is None
        assert st["runs"] >= 2 and st["paths"]["threads"] == "digest"
        r = hvfs("status", str(m.mountpoint))
        assert json.loads(r.stdout)["settle"]["last"]["head"] == head
        assert git("--git-dir", str(f.repo), "log", "-1", "--format=%an <%ae>", "main").strip() == \
            "fleet <fleet@example.com>"
    finally:
        m.stop()


# -- restore -----------------------------------------------------------------------------------


def test_restore_into_an_empty_server(server, raw, tmp_path):
    f = Fleet(tmp_path, server, extra="  dir: state/fleet\n")
    stored = {f"is-{i}": put_issue(raw, f, f"is-{i}", f"title: Issue {i}\npriority: {i % 5}\n") for i in range(4)}
    raw.put(f.notes, "a.b", b"AB")
    raw.put(f.notes, "a", b"A")
    comment(raw, f, "is-1", "ag-7", "kept in git only", "2026-01-01T00:00:00Z")
    assert settle(f).commit
    assert "state/fleet/issues/is-0.yml" in files(f.repo)
    empty = EmbeddedServer(tmp_path / "empty")
    empty.start()
    try:
        args = ["restore", "--server", empty.url, "--config", str(f.path), "--repo", str(f.repo)]
        r = hvfs(*args, "--dry-run")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert sum(line.startswith("would write ") for line in lines) == 6, lines
        assert "not restored threads: a stream's messages (and digests) are a record" in r.stdout

        async def names(store: NatsStore) -> tuple[list[str], list[str]]:
            return [b.name for b in await store.buckets()], [s.name for s in await store.streams()]

        assert in_store(empty.url, names) == ([], [])  # a dry run creates nothing
        r = hvfs(*args)
        assert r.returncode == 0, r.stderr
        written = sorted(line.split()[1] for line in r.stdout.splitlines() if line.startswith("written "))
        assert written == ["issues/is-0.yml", "issues/is-1.yml", "issues/is-2.yml", "issues/is-3.yml",
                           "notes/a", "notes/a/b"] or written == sorted(
            ["issues/is-0.yml", "issues/is-1.yml", "issues/is-2.yml", "issues/is-3.yml", "notes/a/.value",
             "notes/a/b"]), r.stdout
        other = RawNats(empty.url)
        try:
            for k, v in stored.items():
                assert other.value(f.issues, k) == v  # the stored JSON, byte for byte
            assert other.value(f.notes, "a") == b"A" and other.value(f.notes, "a.b") == b"AB"
            info = other.run(other.js.stream_info(f"KV_{f.issues}"))
            assert info.config.max_msgs_per_subject == 10  # made from the config's binding
            assert other.run(other.js.stream_info(f.threads)).state.messages == 0  # made, empty
            again = hvfs(*args)
            assert again.returncode == 0 and "written" not in again.stdout
            assert again.stdout.count(": unchanged") == 6, again.stdout
        finally:
            other.close()
    finally:
        empty.stop()


def test_restore_skips_newer_values_and_lists_them(server, raw, tmp_path):
    f = Fleet(tmp_path, server)
    for i in range(1, 4):
        put_issue(raw, f, f"is-{i}", f"title: Issue {i}\n")
    c1 = settle(f).commit
    assert c1
    recorded = trailers(f.repo, "main", "Hvfs-Bucket-Revision")[f.issues]
    newer = put_issue(raw, f, "is-1", "title: Changed after the commit\n")
    raw.delete(f.issues, "is-2")
    c2 = settle(f).commit
    assert c2 and c2 != c1
    r = hvfs("restore", "--server", server.url, "--config", str(f.path), "--rev", c1, "issues")
    assert r.returncode == 0, r.stderr
    lines = sorted(line for line in r.stdout.splitlines() if line.startswith("skipped"))
    assert lines[0].startswith(f"skipped issues/is-1.yml (is-1): newer in NATS (changed at revision {recorded + 1}, "
                               f"the commit holds revision {recorded})"), lines
    assert lines[1].startswith(f"skipped issues/is-2.yml (is-2): newer in NATS (deleted at revision {recorded + 2}")
    assert lines[2].startswith("skipped issues/is-3.yml (is-3): unchanged")
    assert raw.value(f.issues, "is-1") == newer and raw.value(f.issues, "is-2") is None
    assert "not restored overlays: policy overlay" in r.stdout  # applied to issues, not values of its own
    # the branch's commit holds NATS as it is now: nothing to write
    r = hvfs("restore", "--server", server.url, "--config", str(f.path), "issues")
    assert r.returncode == 0 and sorted(line.split(":")[-1].split("(")[0].strip()
                                        for line in r.stdout.splitlines() if line.startswith("skipped")) == \
        ["unchanged", "unchanged"], r.stdout


# -- bad input ---------------------------------------------------------------------------------


def test_bad_repositories(server, raw, tmp_path):
    f = Fleet(tmp_path, server)
    put_issue(raw, f, "is-1", "title: One\n")
    before = {b: last_seq(raw, f"KV_{b}") for b in (f.issues, f.notes)}

    def fails(kind: type[HvfsError], config: MountConfig, *needles: str) -> None:
        with pytest.raises(kind) as e:
            settle(f, config)
        for n in needles:
            assert n in e.value.reason, e.value.reason

    fails(NotFound, f.with_(repo=str(tmp_path / "missing.git")), "missing.git", "git init --bare")
    (tmp_path / "plain").mkdir()
    fails(Invalid, f.with_(repo=str(tmp_path / "plain")), "plain", "not a git repository")
    good = settle(f)
    assert good.commit
    # locked: a git command is writing the branch
    lock = f.repo / "refs" / "heads" / "main.lock"
    lock.write_text("")
    put_issue(raw, f, "is-2", "title: Two\n")
    fails(Busy, f.config, str(f.repo), "main.lock", "locked")
    r = hvfs("settle", "--server", server.url, "--config", str(f.path))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith(f"hvfs: repository {f.repo}: branch main "
                                                                         "is locked"), r
    lock.unlink()
    # a tag is not a branch; a branch name git refuses
    git("--git-dir", str(f.repo), "tag", "v1", "main")
    fails(Invalid, f.with_(branch="v1"), "v1 is a tag, not a branch")
    r = hvfs("settle", "--server", server.url, "--config", str(f.path), "--branch", "bad..name")
    assert r.returncode == 2 and "is not a branch name" in r.stderr, r
    # a remote that refuses (not a repository)
    (tmp_path / "notgit").mkdir()
    fails(Unavailable, f.with_(remote=str(tmp_path / "notgit")), "notgit", "not a git repository")
    # corrupt: the branch's commit object is garbage
    assert git("--git-dir", str(f.repo), "rev-parse", "main").strip() == good.commit  # no ref moved
    obj = f.repo / "objects" / good.commit[:2] / good.commit[2:]
    os.chmod(obj, 0o644)
    obj.write_bytes(b"garbage")
    fails(Unavailable, f.config, str(f.repo), "corrupt", "fsck")
    assert (f.repo / "refs" / "heads" / "main").read_text().strip() == good.commit
    # settle only reads NATS; restore from a bad repository writes nothing either
    assert {b: last_seq(raw, f"KV_{b}") for b in (f.issues, f.notes)} == {**before, f.issues: before[f.issues] + 1}
    r = hvfs("restore", "--server", server.url, "--config", str(f.path), "--repo", str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope: no such directory" in r.stderr, r
    assert last_seq(raw, f"KV_{f.issues}") == before[f.issues] + 1
