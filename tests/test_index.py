"""The compact index: keys nobody looked up are leaves, not inodes, and behave like files."""

import json
import os
import subprocess

from hvfs.vfs.tree import Kind, KvView, Node, Tree

from .helpers import Inotify, Mount, RawNats, changed_while_away, wait_for

# -- the tree alone (no NATS, no kernel) ---------------------------------------------------


def _view(suffix: str = "", prefix: str = "") -> tuple[Tree, KvView]:
    tree = Tree()
    view = KvView(tree, tree.mkdirs("kv/b"), "b", prefix, suffix)
    return tree, view


def _raw(d: Node, name: bytes) -> object:
    return dict.get(d.children, name)  # type: ignore[arg-type]


def test_snapshot_keys_are_leaves_until_read():
    tree, v = _view()
    inodes = len(tree.nodes)
    for i in range(100):
        v.apply(f"k{i}", False, 10 + i, i, 1000.0 + i)
    v.apply("dir.inner", False, 500, 3, 2000.0)
    v.end_resync()
    assert len(v.keys) == 101
    assert len(tree.nodes) == inodes + 1  # the directory "dir" only
    assert isinstance(_raw(v.root, b"k7"), bytes)
    assert sorted(v.entries())[0] == ("dir.inner", 500, 3, 2000.0)
    assert len(tree.nodes) == inodes + 1  # entries() makes no Node
    n = v.keys.get("k7")
    assert isinstance(n, Node) and n.kind is Kind.KV
    assert (n.key, n.name, n.revision, n.size, n.mtime) == ("k7", b"k7", 17, 7, 1007.0)
    assert n.parent is v.root and v.root.children[b"k7"] is n and tree.nodes[n.ino] is n
    m = v.root.children.get(b"k8")
    assert m is v.keys["k8"] and m.revision == 18
    assert v.root.children.subdirs() == 1
    assert len(v.root.children.items()) == 101  # a listing makes every entry a Node
    assert len(tree.nodes) == inodes + 101  # (dir.inner is still a leaf)


def _scan_subdirs(tree: Tree) -> None:
    """Every directory's kept count of subdirectories is what a scan finds."""
    for n in list(tree.nodes.values()):
        if n.children is not None:
            scan = sum(1 for c in n.children.nodes() if c.kind is Kind.DIR)
            assert n.children.subdirs() == scan, n


def test_subdirectory_counts_follow_every_change():
    tree, v = _view()
    for k in ("a", "d1.x", "d1.y", "d2.e.f", "g.h", "g"):
        v.apply(k, False, 1, 1, 1.0)
    v.end_resync()
    _scan_subdirs(tree)
    assert v.root.children.subdirs() == 3  # d1, d2, g (g's value is g/.value)
    v.apply("d3.z", False, 2, 1, 1.0)  # a new directory while watched
    v.apply("d1.x", True, 3, 0, 1.0)
    v.apply("d1.y", True, 4, 0, 1.0)  # d1 emptied: pruned
    v.apply("g.h", True, 5, 0, 1.0)
    _scan_subdirs(tree)
    d2 = v.root.children[b"d2"]
    tree.unlink_for_move(d2)
    _scan_subdirs(tree)
    tree.attach(v.root.children[b"d3"], d2)
    _scan_subdirs(tree)
    tree.detach(d2)
    assert v.root.children.pop(b"nothing", None) is None
    _scan_subdirs(tree)


def test_leaf_revisions_resync_and_deletes():
    tree, v = _view()
    v.apply("a", False, 5, 1, 1.0)
    v.apply("gone", False, 6, 1, 1.0)
    v.end_resync()
    base = len(tree.nodes)
    v.apply("a", False, 4, 9, 9.0)  # an older revision: ignored, still a leaf
    assert isinstance(_raw(v.root, b"a"), bytes)
    v.begin_resync()
    v.apply("a", False, 5, 1, 1.0)  # a resync repeating what the leaf has: no Node
    v.end_resync()
    assert len(tree.nodes) == base and "gone" not in v.keys
    assert isinstance(_raw(v.root, b"a"), bytes)
    v.apply("a", True, 7, 0, 2.0)
    assert "a" not in v.keys and _raw(v.root, b"a") is None


def test_told_changes_make_nodes():
    tree, v = _view()
    v.apply("a", False, 5, 1, 1.0)
    v.end_resync()
    told: list[tuple[bytes, str]] = []
    tree.listeners.append(lambda parent, name, node, what: told.append((name, what)))
    v.apply("a", False, 6, 2, 2.0)
    assert told == [(b"a", "modify")] and v.keys["a"].revision == 6
    v.apply("b", False, 1, 1, 1.0)
    assert told[-1] == (b"b", "create") and isinstance(_raw(v.root, b"b"), Node)


def test_leaf_becomes_value_of_a_directory():
    tree, v = _view()
    v.apply("a", False, 1, 1, 1.0)
    v.apply("a.b", False, 2, 2, 2.0)
    v.end_resync()
    d = v.root.children[b"a"]
    assert d.kind is Kind.DIR
    assert d.children[b".value"].key == "a" and d.children[b"b"].key == "a.b"


def test_leaves_with_suffix_prefix_and_escapes():
    tree, v = _view(".yml", "agents")
    v.apply("agents.ag-7", False, 3, 4, 1.0)
    v.apply("agents.x=2Ey", False, 4, 4, 1.0)  # an escaped name is a Node at once
    v.apply("other.k", False, 5, 4, 1.0)  # outside the prefix: not shown
    v.end_resync()
    assert isinstance(_raw(v.root, b"ag-7.yml"), bytes)
    assert isinstance(_raw(v.root, b"x.y.yml"), Node)
    n = v.root.children[b"ag-7.yml"]
    assert n.key == "agents.ag-7" and v.keys["agents.ag-7"] is n
    assert "other.k" not in v.keys


def test_second_view_copies_leaves_as_leaves():
    tree, v = _view()
    for i in range(10):
        v.apply(f"k{i}", False, i + 1, i, 1.0)
    v.end_resync()
    w = KvView(tree, tree.mkdirs("kv/c"), "b")
    for key, rev, size, mtime in v.entries():
        w.put(key, rev, size, mtime, notify=False, leaf=True)
    w.end_resync()
    assert all(isinstance(_raw(w.root, f"k{i}".encode()), bytes) for i in range(10))
    assert w.keys["k3"].revision == 4


# -- through a real mount -------------------------------------------------------------------


def _status(m: Mount) -> dict:
    return json.loads(m.path(".hvfs", "status").read_bytes())


def test_a_big_bucket_mounts_without_an_inode_per_key(own_server, tmp_path):
    b, n = "big", 3000
    raw = RawNats(own_server.url)
    try:
        raw.create_bucket(b)
        raw.put_many(b, {f"k{i:05d}": f"value {i}".encode() for i in range(n)})
    finally:
        raw.close()
    m = Mount(tmp_path / "m", own_server.url).start()
    try:
        d = m.path("kv", b)
        st = _status(m)
        assert st["keys"] >= n
        assert st["inodes"] < n // 3, st["inodes"]  # leaves until looked up
        assert (d / "k00042").read_bytes() == b"value 42"
        assert os.stat(d / "k01234").st_size == len(b"value 1234")
        assert _status(m)["inodes"] < n // 3
        names = os.listdir(d)
        assert len(names) == n and sorted(names)[:2] == ["k00000", "k00001"]
        assert _status(m)["inodes"] >= n  # readdirplus hands the kernel every entry
        out = subprocess.run(["cat", str(d / "k02999")], capture_output=True, check=True).stdout
        assert out == b"value 2999"
    finally:
        m.stop()


def test_leaves_change_move_and_go_like_files(server, raw, bucket, tmp_path):
    b = bucket
    raw.put_many(b, {"upd": b"old", "del": b"x", "mv": b"moving", "rm": b"r", "a": b"file a"})
    m = Mount(tmp_path / "m", server.url).start()
    try:
        d = m.path("kv", b)
        w = Inotify(d)
        try:
            raw.put(b, "upd", b"new!")
            w.wait("MODIFY", d / "upd")
            assert (d / "upd").read_bytes() == b"new!"
            raw.delete(b, "del")
            w.wait("DELETE", d / "del")
            raw.put(b, "a.b", b"inner")
            w.wait("CREATE,ISDIR", d / "a")
            assert (d / "a" / ".value").read_bytes() == b"file a"
            assert (d / "a" / "b").read_bytes() == b"inner"
        finally:
            w.stop()
        subprocess.run(["mv", str(d / "mv"), str(d / "moved")], check=True)
        subprocess.run(["rm", str(d / "rm")], check=True)
        assert sorted(os.listdir(d)) == ["a", "moved", "upd"]
        assert (d / "moved").read_bytes() == b"moving"
        assert raw.value(b, "moved") == b"moving"
        assert raw.value(b, "mv") is None and raw.value(b, "rm") is None
    finally:
        m.stop()


def test_leaves_catch_up_after_an_outage(own_server, tmp_path):
    raw = RawNats(own_server.url)
    try:
        raw.create_bucket("lv")
        raw.put_many("lv", {"keep": b"1", "change": b"old", "drop": b"x"})
    finally:
        raw.close()
    m = Mount(tmp_path / "m", own_server.url, "--timeout", "1").start()
    try:
        d = m.path("kv", "lv")
        def change(raw: RawNats) -> None:
            raw.put("lv", "change", b"new value")
            raw.delete("lv", "drop")

        again = changed_while_away(own_server, m, change)
        try:
            wait_for(lambda: sorted(os.listdir(d)) == ["change", "keep"], timeout=15, what="resync")
            assert (d / "change").read_bytes() == b"new value"
            assert (d / "keep").read_bytes() == b"1"
        finally:
            again.stop()
    finally:
        m.stop()
