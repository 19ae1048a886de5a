"""The configured layout on the in-memory store: buckets made with the binding's
settings, existing ones checked, the TTL fallback of a server without per-message
TTL, and the typed write path's refusals through the vfs facade."""

from __future__ import annotations

import errno
import json
import os

import pytest
import trio

from hvfs.config import MountConfig
from hvfs.errors import Invalid, NotFound, errno_of
from hvfs.store.memory import MemoryStore
from hvfs.vfs.core import Vfs

PID = 4242


def _config(**binding: object) -> MountConfig:
    return MountConfig.model_validate({"raw": False, "bindings": [
        {"path": "agents", "kv": "ag", "format": "yaml", "schema": "agent", **binding},
        {"path": "issues", "kv": "is", "format": "yaml", "schema": "issue"},
        {"path": "claims", "kv": "cl", "format": "yaml", "schema": "claim", "refs": {"issue_id": "issues"}},
    ]})


def _run(body, config: MountConfig, msg_ttl: bool = True, before=None) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        store = MemoryStore(msg_ttl=msg_ttl)
        await store.start()
        try:
            if before is not None:
                before(store)
            vfs = Vfs(store, config, writer="ag-7")
            try:
                with trio.fail_after(10):
                    await vfs.start()
                    await body(vfs, store)
            finally:
                await vfs.close()
        finally:
            await store.close()

    trio.run(main)


async def _write(vfs: Vfs, path: str, data: bytes) -> None:
    *dirs, name = path.split("/")
    d = vfs.tree.root
    for part in dirs:
        d = await vfs.lookup(d.ino, part.encode(), PID)
    h = await vfs.create(d.ino, name.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PID)
    try:
        await vfs.write(h.fh, 0, data)
        await vfs.flush(h.fh)
    finally:
        vfs.release(h.fh)


def test_a_ttl_binding_makes_its_bucket_with_per_message_ttl_and_one_revision():
    async def body(vfs: Vfs, store: MemoryStore) -> None:
        bi = await store.bucket("ag")
        assert bi.msg_ttl and bi.marker_ttl == 1.0 and bi.history == 1 and bi.max_age == 0
        assert (await store.bucket("is")).history == 10
        await _write(vfs, "agents/ag-7.yml", b"status: working\n")
        e = await store.get("ag", "ag-7")
        assert e.headers["Nats-TTL"] == "30" and e.headers["Hvfs-Writer"] == "ag-7"
        assert json.loads(e.value)["id"] == "ag-7"
        assert vfs.status()["ttl_notes"] == []

    _run(body, _config(ttl=30))


def test_without_per_message_ttl_the_ttl_becomes_the_buckets_max_age():
    async def body(vfs: Vfs, store: MemoryStore) -> None:
        bi = await store.bucket("ag")
        assert bi.max_age == 30 and bi.marker_ttl == 0
        await _write(vfs, "agents/ag-7.yml", b"status: working\n")
        assert "Nats-TTL" not in (await store.get("ag", "ag-7")).headers
        st = vfs.status()
        assert st["msg_ttl"] is False and "max age" in st["ttl_notes"][0]  # type: ignore[index]
        assert st["bindings"][0]["ttl_mode"] == "bucket max age (fallback)"  # type: ignore[index]

    _run(body, _config(ttl=30), msg_ttl=False)


@pytest.mark.parametrize("setup, binding, words", [
    (lambda s: s.add_bucket("ag", msg_ttl=False), {"ttl": 30}, "does not allow per-message TTL"),
    (lambda s: s.add_bucket("ag"), {"ttl": 30}, "no limit marker TTL"),
    (lambda s: s.add_bucket("ag", history=5), {"history": 7}, "history is 5, the binding says 7"),
])
def test_an_existing_bucket_that_contradicts_the_binding_stops_the_start(setup, binding, words):
    async def main() -> None:
        store = MemoryStore()
        await store.start()
        try:
            setup(store)
            vfs = Vfs(store, _config(**binding))
            with pytest.raises(Invalid) as ei:
                await vfs.start()
            assert "bucket ag exists with other settings" in ei.value.reason and words in ei.value.reason
            await vfs.close()
        finally:
            await store.close()

    trio.run(main)


def test_a_refused_claim_takes_its_create_back_and_says_why():
    async def body(vfs: Vfs, store: MemoryStore) -> None:
        claims = await vfs.lookup(1, b"claims", PID)
        d = await vfs.mkdir(claims.ino, b"is-9")
        h = await vfs.create(d.ino, b"owner.yml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, PID)
        await vfs.write(h.fh, 0, b"agent_id: ag-7\n")
        with pytest.raises(Invalid) as ei:
            await vfs.flush(h.fh)
        vfs.release(h.fh)
        assert errno_of(ei.value) == errno.EINVAL and "is-9 does not exist (issues/is-9.yml)" in ei.value.reason
        with pytest.raises(NotFound):
            await store.get("cl", "is-9.owner")
        assert d.children == {}
        [c] = list(vfs.conflicts.items.values())
        assert c.data == b"agent_id: ag-7\n"

    _run(body, _config())
