"""Tier 1: the settlement's git side (hvfs.settle.git, dulwich only) and its pure parts
(hvfs.settle.tree, the settle: config section), with no NATS.

Repositories are made by the git CLI and read back by it: what hvfs writes must be an
ordinary repository (``git fsck``, ``git log``, trailers git understands).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dulwich.objects import Blob
from dulwich.repo import Repo

from hvfs.config import MountConfig, load_config
from hvfs.entities import Issue
from hvfs.errors import Busy, Invalid, NotFound, Unavailable
from hvfs.settle.git import LOCK_WAIT, Git, PushResult, TreeEdit
from hvfs.settle.tree import (
    Marks,
    apply_overlays,
    digest_last_seq,
    digest_section,
    file_key,
    kv_file,
    msg_file,
    resolve,
    restore_value,
    thread_file,
)
from hvfs.store import StreamMsg


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"git {' '.join(args)}: {r.stderr}")
    return r.stdout


def bare(tmp_path: Path, name: str = "r.git") -> Path:
    p = tmp_path / name
    git("init", "-q", "--bare", "-b", "main", str(p))
    return p


def commit_files(g: Git, files: dict[tuple[bytes, ...], bytes], parent=None, trailers=()) -> bytes:
    e = g.edit(parent)
    for parts, data in files.items():
        e.put(parts, data)
    tree = g.save(e)
    return g.commit(tree, parent, "t <t@localhost>", "test", list(trailers), when=1_700_000_000)


# -- TreeEdit ------------------------------------------------------------------------------


def _edit(repo: Repo, tree: bytes | None = None) -> TreeEdit:
    return TreeEdit(repo.object_store.__getitem__, tree)


def _save(repo: Repo, e: TreeEdit) -> bytes:
    tree = e.write()
    for o in e.new.values():
        repo.object_store.add_object(o)
    e.new.clear()
    return tree


def test_same_files_same_tree_whatever_the_path_to_them(tmp_path):
    repo = Repo(str(bare(tmp_path)))
    files = {(b"issues", b"is-%d.yml" % i): b"title: %d\n" % i for i in range(50)}
    files[(b"links", b"is-1", b"mapping.yml")] = b"github_pr: x\n"
    a = _edit(repo)
    for p, d in files.items():
        a.put(p, d)
    one = _save(repo, a)
    # the same files reached through another history: extra files put, changed, removed again
    b = _edit(repo)
    for p, d in reversed(list(files.items())):
        b.put(p, d + b"old")
    b.put((b"gone", b"x"), b"1")
    t = _save(repo, b)
    c = _edit(repo, t)
    for p, d in files.items():
        c.put(p, d)
    assert c.delete((b"gone", b"x"))
    assert _save(repo, c) == one
    # replace() of a subtree with the same files: the same tree again
    d_ = _edit(repo, one)
    d_.replace((b"issues",), {p[1:]: dd for p, dd in files.items() if p[0] == b"issues"})
    assert _save(repo, d_) == one
    # an empty repository tree has git's empty tree id
    assert _save(repo, _edit(repo)) == b"4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def test_value_placement_as_the_mount_does(tmp_path):
    repo = Repo(str(bare(tmp_path)))
    e = _edit(repo)
    e.put((b"a",), b"A")
    e.put((b"a", b"b"), b"AB")  # key a.b beside a: a moves inside as .value
    t = _save(repo, e)
    e = _edit(repo, t)
    assert e.read((b"a",)) == b"A" and e.read((b"a", b"b")) == b"AB"
    assert sorted(p for p, _ in e.files(())) == [(b"a", b".value"), (b"a", b"b")]
    e.put((b"a",), b"A2")  # a key that is a directory writes its .value
    assert e.read((b"a", b".value")) == b"A2"
    assert e.delete((b"a", b"b"))  # the directory empties: .value folds back into the file a
    assert sorted(p for p, _ in e.files(())) == [(b"a",)]
    assert e.delete((b"a",)) and not list(e.files(()))
    assert not e.delete((b"nothing", b"here"))


def test_unchanged_subtrees_are_not_read(tmp_path):
    repo = Repo(str(bare(tmp_path)))
    e = _edit(repo)
    for i in range(20):
        e.put((b"big", b"f%d" % i), b"%d" % i)
    e.put((b"small", b"x"), b"x")
    t = _save(repo, e)
    read: list[bytes] = []

    def spy(sha):
        read.append(sha)
        return repo.object_store[sha]

    e = TreeEdit(spy, t)
    e.put((b"small", b"y"), b"y")
    t2 = e.write()
    big = repo.object_store[t][b"big"][1]
    assert big not in read and len(read) == 2  # the root and small/
    assert t2 != t


# -- the repository -----------------------------------------------------------------------


def test_commit_is_an_ordinary_commit_with_trailers(tmp_path):
    p = bare(tmp_path)
    marks = Marks({"fleet_issues": 42}, {"fleet_threads": 7}, {"issues": ("full", "abc123")})
    with Git.open(str(p), "main") as g:
        assert g.head() is None
        c = commit_files(g, {(b"issues", b"is-1.yml"): b"title: x\n"}, trailers=marks.trailers())
        assert g.move(None, c, "test")
        h = g.head()
        assert h is not None and h.commit == c
        assert Marks.parse(h.trailers) == marks
    git("--git-dir", str(p), "fsck", "--strict")
    assert git("--git-dir", str(p), "show", "main:issues/is-1.yml") == "title: x\n"
    out = git("--git-dir", str(p), "log", "-1", "--format=%(trailers:key=Hvfs-Bucket-Revision,valueonly)", "main")
    assert out.strip() == "fleet_issues=42"
    out = git("--git-dir", str(p), "log", "-1", "--format=%(trailers:key=Hvfs-Stream-Sequence,valueonly)", "main")
    assert out.strip() == "fleet_threads=7"


def test_branch_compare_and_set(tmp_path):
    p = bare(tmp_path)
    with Git.open(str(p), "main") as g:
        a = commit_files(g, {(b"f",): b"1"})
        assert g.move(None, a, "a")
        h = g.head()
        b = commit_files(g, {(b"f",): b"2"}, parent=h)
        c = commit_files(g, {(b"f",): b"3"}, parent=h)
        assert g.move(a, b, "b")
        assert not g.move(a, c, "c")  # the branch moved: the second settler must redo on top
        assert g.head_id() == b


def test_a_repository_with_a_worktree_is_left_alone(tmp_path):
    w = tmp_path / "w"
    git("init", "-q", "-b", "work", str(w))
    (w / "mine.txt").write_text("mine\n")
    git("-c", "user.name=u", "-c", "user.email=u@x", "add", "mine.txt", cwd=w)
    git("-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m", "mine", cwd=w)
    (w / "mine.txt").write_text("changed, not committed\n")
    index = (w / ".git" / "index").read_bytes()
    head = (w / ".git" / "HEAD").read_text()
    with Git.open(str(w), "settled") as g:
        c = commit_files(g, {(b"issues", b"is-1.yml"): b"title: x\n"})
        assert g.move(None, c, "settle")
    assert (w / ".git" / "index").read_bytes() == index and (w / ".git" / "HEAD").read_text() == head
    assert sorted(os.listdir(w)) == [".git", "mine.txt"]
    assert (w / "mine.txt").read_text() == "changed, not committed\n"
    assert git("status", "--porcelain", cwd=w) == " M mine.txt\n"
    assert git("show", "settled:issues/is-1.yml", cwd=w) == "title: x\n"


def test_bad_repositories(tmp_path):
    with pytest.raises(NotFound) as e:
        Git.open(str(tmp_path / "missing"), "main")
    assert "missing" in e.value.reason and "git init --bare" in e.value.reason
    (tmp_path / "plain").mkdir()
    with pytest.raises(Invalid) as e2:
        Git.open(str(tmp_path / "plain"), "main")
    assert "not a git repository" in e2.value.reason and "plain" in e2.value.reason
    p = bare(tmp_path)
    with pytest.raises(Invalid) as e2:
        Git.open(str(p), "bad..name")
    assert "not a branch name" in e2.value.reason
    with Git.open(str(p), "main") as g:
        c = commit_files(g, {(b"f",): b"1"})
        assert g.move(None, c, "x")
    git("--git-dir", str(p), "tag", "v1", "main")
    with pytest.raises(Invalid) as e2:
        Git.open(str(p), "v1")
    assert "v1 is a tag, not a branch" in e2.value.reason
    # a branch pointing at a blob is no branch to commit on
    with Git.open(str(p), "main") as g:
        b = Blob.from_string(b"x")
        g.repo.object_store.add_object(b)
        g.repo.refs[b"refs/heads/blob"] = b.id
    with Git.open(str(p), "blob") as g, pytest.raises(Invalid) as e2:
        g.head()
    assert "not a commit" in e2.value.reason
    # locked: another git process holds the branch
    lock = p / "refs" / "heads" / "main.lock"
    lock.write_text("")
    with Git.open(str(p), "main") as g:
        with pytest.raises(Busy) as e3:
            g.check_unlocked()
        assert "main.lock" in e3.value.reason and "locked" in e3.value.reason
        h = g.head()
        with pytest.raises(Busy):
            g.move(c, commit_files(g, {(b"f",): b"2"}, parent=h), "x")
        assert g.head_id() == c
        # a lock held briefly (as by another settler's move) is waited for, not refused
        t = threading.Timer(0.3, lock.unlink)
        t.start()
        try:
            t0 = time.monotonic()
            c2 = commit_files(g, {(b"f",): b"3"}, parent=h)
            assert g.move(c, c2, "x") and g.head_id() == c2
            assert 0.2 < time.monotonic() - t0 < LOCK_WAIT
        finally:
            t.join()
        assert g.move(c2, c, "back")
    # corrupt: the head commit's object is garbage
    obj = p / "objects" / c[:2].decode() / c[2:].decode()
    os.chmod(obj, 0o644)
    obj.write_bytes(b"not zlib at all")
    with Git.open(str(p), "main") as g, pytest.raises(Unavailable) as e4:
        g.head()
    assert "corrupt" in e4.value.reason and "fsck" in e4.value.reason


def test_push_fetch_and_refusal(tmp_path):
    remote = bare(tmp_path, "remote.git")
    a, b = bare(tmp_path, "a.git"), bare(tmp_path, "b.git")
    with Git.open(str(a), "main") as ga, Git.open(str(b), "main") as gb:
        c1 = commit_files(ga, {(b"f",): b"1"})
        assert ga.push(str(remote), c1) == PushResult.OK
        assert ga.push(str(remote), c1) == PushResult.UP_TO_DATE
        d1 = commit_files(gb, {(b"g",): b"1"})  # another history: not a fast-forward
        assert gb.push(str(remote), d1) == PushResult.REFUSED
        r = gb.fetch(str(remote))
        assert r == c1 and gb.head(r) is not None  # the objects came
        d2 = commit_files(gb, {(b"g",): b"1"}, parent=gb.head(r))
        assert gb.push(str(remote), d2) == PushResult.OK
        with pytest.raises(Unavailable) as e:
            ga.push(str(tmp_path / "nowhere.git"), c1)
        assert "nowhere.git" in e.value.reason
        (tmp_path / "notrepo").mkdir()
        with pytest.raises(Unavailable) as e:
            ga.fetch(str(tmp_path / "notrepo"))
        assert "not a git repository" in e.value.reason
    assert git("--git-dir", str(remote), "rev-list", "main").split() == [d2.decode(), c1.decode()]
    git("--git-dir", str(remote), "fsck", "--strict")


# -- pure parts: files, digests, overlays, config ----------------------------------------------

CONFIG = """\
bindings:
  - {path: issues, kv: s_issues, format: yaml, schema: issue}
  - {path: overlays, kv: s_ov, format: yaml, schema: overlay, refs: {issue_id: issues}}
  - {path: raw, kv: s_raw, prefix: team1}
  - {path: agents, kv: s_agents, format: yaml, schema: agent}
streams:
  - {path: threads, stream: s_threads, prefix: threads, format: yaml, schema: comment}
settle:
  repo: r.git
  dir: state
  paths:
    - {path: issues}
    - {path: overlays, policy: overlay}
    - {path: raw}
    - {path: threads, policy: digest}
    - {path: agents, policy: never}
"""


def _cfg(tmp_path: Path, text: str = CONFIG) -> MountConfig:
    f = tmp_path / "c.yml"
    f.write_text(text)
    return load_config(f)


def test_files_as_the_mount_names_them(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg.settle is not None
    src = {s.path: s for s in resolve(cfg, cfg.settle)}
    assert set(src) == {"issues", "overlays", "raw", "threads"}  # agents: never
    issues, raw, threads = src["issues"], src["raw"], src["threads"]
    assert issues.location == (b"state", b"issues") and src["overlays"].location == issues.location
    assert kv_file(issues, "is-42") == (b"is-42.yml",)
    assert kv_file(raw, "team1.a.b=2Etxt") == (b"a", b"b.txt")
    assert kv_file(raw, "team2.a") is None
    assert kv_file(raw, "team1.we=ird") == (b"we=ird",)  # a foreign token: shown as its text
    for key in ("is-42",):
        assert file_key(issues, kv_file(issues, key)) == key
    for key in ("team1.a.b=2Etxt", "team1.x=20y"):
        assert file_key(raw, kv_file(raw, key)) == key
    assert file_key(raw, (b"a", b".value")) == "team1.a"
    assert file_key(issues, (b"is-1.json",)) is None
    assert msg_file(threads, "threads.is-42", 17) == (b"is-42", b"17")
    assert thread_file(threads, "threads.is-42") == (b"is-42.md",)
    assert thread_file(threads, "other.x") is None
    stored = Issue(id="is-1", title="x").model_dump_json(exclude_none=True).encode()
    shown = issues.codec().show(stored)[0]
    assert restore_value(issues, (b"is-1.yml",), shown, "w") == stored


def test_resolve_settles_linked_paths_together(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg.settle is not None
    assert {s.path for s in resolve(cfg, cfg.settle, ["overlays"])} == {"overlays", "issues"}
    assert {s.path for s in resolve(cfg, cfg.settle, ["/raw/"])} == {"raw"}
    with pytest.raises(Invalid, match="policy never"):
        resolve(cfg, cfg.settle, ["agents"])
    with pytest.raises(Invalid, match="not a settled path"):
        resolve(cfg, cfg.settle, ["nope"])


def test_digest_sections_in_order_with_author_and_time():
    body = "first line\n### #999 \u00b7 not a heading\nlast"
    doc = {"type": "cm", "id": "cm-1", "issue_id": "is-1", "author": "ag-7", "body": body,
           "created_at": "2026-01-02T03:04:05Z"}
    m = StreamMsg("s", "threads.is-1", 12, (json.dumps(doc) + "\n").encode(), {}, 0.0)
    sec = digest_section(m)
    assert sec.startswith("\n### #12 \u00b7 ag-7 \u00b7 2026-01-02T03:04:05Z\n\nfirst line\n".encode())
    assert b"\\### #999" in sec  # a body line that looks like a section is escaped
    assert digest_last_seq(b"# t\n" + sec) == 12
    plain = StreamMsg("s", "threads.is-1", 13, b"just text", {"Hvfs-Writer": "ops"}, 86400.0)
    assert digest_section(plain) == "\n### #13 \u00b7 ops \u00b7 1970-01-02T00:00:00Z\n\njust text\n".encode()


def test_overlay_fields_applied_when_the_issue_takes_them():
    issue = Issue(id="is-1", title="x").model_dump_json(exclude_none=True).encode()
    ok = {"overlay_status": "review", "overlay_assignee": "ag-7", "settle_fields": ["status"]}
    out = json.loads(apply_overlays(issue, [ok], Issue))
    assert out["status"] == "review" and "assignee" not in out  # only the settle_fields
    bad = {"overlay_status": "sleeping", "settle_fields": ["status"]}  # not an issue status
    assert apply_overlays(issue, [bad], Issue) == issue
    both = {"overlay_status": "closed", "overlay_assignee": "ag-9", "settle_fields": ["status", "assignee"]}
    out = json.loads(apply_overlays(issue, [ok, both], Issue))
    assert (out["status"], out["assignee"]) == ("closed", "ag-9")


@pytest.mark.parametrize("body,needle", [
    ("settle:\n  paths:\n    - {path: nope}\n", "c.yml:10: settle.paths[0].path: nope is not the path"),
    ("settle:\n  paths:\n    - {path: issues, policy: digest}\n", "digest is for stream bindings"),
    ("settle:\n  paths:\n    - {path: threads, policy: overlay}\n", "overlay is for typed KV bindings"),
    ("settle:\n  paths:\n    - {path: overlays, policy: overlay}\n", "must settle with policy full"),
    ("settle:\n  branch: refs/heads/x\n", "is a ref, not a branch name"),
    ("settle:\n  branch: 'a b'\n", "is not a branch name"),
    ("settle:\n  author: nobody\n", "expected 'Name <email>'"),
    ("settle:\n  interval: 5\n", "needs repo"),
    ("settle:\n  dir: ../x\n", "bad directory"),
    ("settle:\n  paths:\n    - {path: issues}\n    - {path: issues}\n", "already paths[0]"),
    ("settle:\n  nope: 1\n", "settle.nope"),
])
def test_settle_config_errors(tmp_path, body, needle):
    base = CONFIG.split("settle:")[0]
    with pytest.raises(Invalid) as e:
        _cfg(tmp_path, base + body)
    assert needle in e.value.reason


def test_example_fleet_settles_the_seed_layout():
    cfg = load_config(Path(__file__).parent.parent / "examples" / "fleet.yml")
    assert cfg.settle is not None and cfg.settle.interval == 0
    src = {s.path: s.policy for s in resolve(cfg, cfg.settle)}
    assert src == {"issues": "full", "links": "full", "overlays": "overlay", "threads": "digest"}
