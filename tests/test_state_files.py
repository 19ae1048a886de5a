"""The mount's state directory without a mount: spool slots and conflict files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvfs.vfs.control import Conflicts
from hvfs.vfs.handles import Handle
from hvfs.vfs.spool import HEADER, MSG_ID_LEN, Spool
from hvfs.vfs.tree import Kind, KvView, Node, Tree


def handle(tmp: Tree, key: str = "k", base: int = 7) -> Handle:
    root = tmp.mkdirs("kv/b")
    view = KvView(tmp, root, "b", "", "")
    node = Node(99, Kind.KV, key.encode(), root)
    node.view, node.key = view, key
    return Handle(1, node, True, bytearray(), base)


def slots(d: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((d / "spool").iterdir()) if p.stat().st_size]


def test_spool_mirrors_writes_and_frees_its_slot(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    h = handle(Tree())
    h.data[:] = b"hello"
    sp.wrote(h, 0, b"hello")
    h.data[5:] = b" world"
    sp.wrote(h, 5, b" world")
    [raw] = slots(tmp_path)
    head = json.loads(raw[:HEADER])
    assert (head["where"], head["key"], head["base"], raw[HEADER:]) == ("b", "k", 7, b"hello world")
    del h.data[5:]
    sp.truncated(h, 5)
    assert slots(tmp_path)[0][HEADER:] == b"hello"
    mid = sp.msg_id(h)
    assert mid == f"hvfs-{head['id']}" and len(mid) == len("hvfs-") + MSG_ID_LEN
    sp.done(h)
    assert slots(tmp_path) == [] and sp.held() == 0
    # The freed slot is reused: no file is made on the next write.
    h2 = handle(Tree(), "k2")
    h2.data[:] = b"x"
    sp.wrote(h2, 0, b"x")
    assert len(list((tmp_path / "spool").iterdir())) == 1
    sp.close()


def test_leftovers_after_a_crash(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    h = handle(Tree())
    h.data[:] = b"unpublished"
    sp.wrote(h, 0, b"unpublished")
    p = handle(Tree(), "p")
    p.data[:] = b"acknowledged"
    sp.wrote(p, 0, b"acknowledged")
    sid = sp.adopt(p)
    sp.mark_pending(sid, "000001-b-p@7", 7, ["hvfs-x"])
    # The daemon dies here: nothing is closed. The next mount reads what is left.
    again = Spool(tmp_path)
    left = {e.key: (e, data) for e, data in again.leftovers()}
    assert left["k"][1] == b"unpublished" and not left["k"][0].pending
    assert left["p"][1] == b"acknowledged" and left["p"][0].pending and left["p"][0].sent == ["hvfs-x"]
    # The unacknowledged one is handed over (its slot goes); the pending one stays until applied.
    assert [s[HEADER:] for s in slots(tmp_path)] == [b"acknowledged"]
    again.drop(left["p"][0].id)
    assert slots(tmp_path) == []
    again.close()


def test_no_state_dir_no_files() -> None:
    sp = Spool(None)
    h = handle(Tree())
    sp.wrote(h, 0, b"x")
    assert sp.held() == 0 and sp.msg_id(h).startswith("hvfs-")


def test_conflicts_survive_and_are_removed_on_disk(tmp_path: Path) -> None:
    c = Conflicts(tmp_path)
    one = c.add("b", "a/b", 3, 4, 116, "lost", b"mine", theirs=b"theirs")
    two = c.add("b", "k", 5, None, 110, "timed out", b"t", outcome="unknown", msg_id="hvfs-1")
    assert one.file == "000001-b-a=2Fb@3" and one.data == b"mine" and one.theirs == b"theirs"
    two.outcome, two.landed_revision = "landed", 6
    c.save(two)
    again = Conflicts(tmp_path)
    assert list(again.items) == [one.file, two.file]
    back = again.items[two.file]
    assert (back.outcome, back.landed_revision, back.msg_id, back.data) == ("landed", 6, "hvfs-1", b"t")
    assert again.items[one.file].theirs == b"theirs"
    lines = [json.loads(x) for x in again.index().decode().splitlines()]
    assert "outcome" not in lines[0] and lines[0]["theirs_size"] == 6 and lines[1]["outcome"] == "landed"
    nxt = again.add("b", "z", 1, None, 5, "x", b"")
    assert nxt.file.startswith("000003-")  # numbering goes on
    again.remove(one.file)
    assert not (tmp_path / "conflicts" / one.file).exists()
    assert not (tmp_path / "conflicts" / f"{one.file}.theirs").exists()
    assert one.file not in Conflicts(tmp_path).items


@pytest.mark.parametrize("root", [None])
def test_conflicts_in_memory(root: Path | None) -> None:
    c = Conflicts(root)
    x = c.add("b", "k", 1, None, 5, "r", b"data", theirs=b"t")
    assert x.data == b"data" and x.theirs == b"t"
