"""Tier 2 in memory: the file contract of docs/posix.md on ``Core`` against ``MemoryStore``.

No kernel and no nats-server: each test drives ``Core`` directly, as
``hvfs/fuse/ops.py`` would, inside one ``trio.run``. ``peer`` is another client
of the same data (a second mount, the nats CLI) and the judge of what is in the
store. Errors are checked by errno (``hvfs.errors.errno_of``), as a syscall
would return them. Nothing sleeps to synchronise: what the contract makes
immediate is checked at once; what a watch delivers is awaited with a deadline.

Processes: a handle opened with ``PID`` (this process) belongs to "the process
holding the file open"; ``OTHER`` (pid 1, always alive) is another process.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from hvfs.errors import HvfsError, NotFound, errno_of
from hvfs.names import decode_token
from hvfs.store.memory import MemoryStore
from hvfs.store.rules import write_header_bytes
from hvfs.vfs.core import DEFAULT_MAX_PAYLOAD, Core
from hvfs.vfs.handles import Handle
from hvfs.vfs.kv import value_headers
from hvfs.vfs.tree import Node

PID = os.getpid()  # the process that holds the handles this file opens
OTHER = 1  # another live process: it holds none of them
B = "b"  # every test's bucket
SMALL = "small"  # a bucket with a max value size
SMALL_MAX = 400
#: the largest value the vfs lets a handle of SMALL hold (CAS headers counted)
# Every write carries the writer's header (Vfs's default writer is "hvfs").
SMALL_LIMIT = min(SMALL_MAX, DEFAULT_MAX_PAYLOAD) - write_header_bytes(SMALL, None, value_headers("hvfs"))
DEADLINE = 2.0  # what a watch delivery may take here (it takes one scheduler tick)

WR = os.O_WRONLY
RDWR = os.O_RDWR
CREAT = os.O_WRONLY | os.O_CREAT
TRUNC = os.O_WRONLY | os.O_TRUNC
LONG = b"n" * 256


# -- harness --------------------------------------------------------------------------


@dataclass
class Env:
    core: Core
    store: MemoryStore  # the mount's own client
    peer: MemoryStore  # another client of the same data
    d: int  # inode of kv/b

    async def dir(self, bucket: str) -> int:
        kv = await self.core.lookup(1, b"kv", PID)
        return (await self.core.lookup(kv.ino, bucket.encode(), PID)).ino


def run(body: Callable[[Env], Awaitable[None]], timeout: float = 5.0) -> None:
    """``body`` against a fresh MemoryStore with buckets ``b`` and ``small``; cleaned up in any case."""

    async def main() -> None:
        store = MemoryStore()
        store.add_bucket(B)
        store.add_bucket(SMALL, max_value_size=SMALL_MAX)
        await store.start()
        peer = store.peer()
        await peer.start()
        core = Core(store)
        try:
            with trio.fail_after(timeout):
                await core.start()
                env = Env(core, store, peer, 0)
                env.d = await env.dir(B)
                await body(env)
        finally:
            await core.close()
            await peer.close()
            await store.close()

    trio.run(main)


async def fails(code: int, call: Coroutine[Any, Any, Any]) -> HvfsError:
    """``call`` fails with errno ``code``; returns the error."""
    with pytest.raises(HvfsError) as e:
        await call
    assert errno_of(e.value) == code, f"{errno.errorcode[errno_of(e.value)]} ({e.value.reason}), " \
                                      f"expected {errno.errorcode[code]}"
    return e.value


async def until(cond: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for ``cond`` with a deadline (a watch delivery), failing with ``what``."""
    deadline = trio.current_time() + DEADLINE
    while not await cond():
        if trio.current_time() > deadline:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        await trio.sleep(0.001)


async def names(env: Env, d: int | None = None) -> list[bytes]:
    return [n for n, _ in await env.core.readdir(env.d if d is None else d, PID)]


async def now(x: bool) -> bool:
    """A condition read from the index, for ``until``."""
    return x


async def absent(env: Env, name: bytes, d: int | None = None) -> bool:
    return name not in await names(env, d)


async def seeded(env: Env, key: str, value: bytes) -> tuple[Node, int]:
    """``key`` put by the peer, once the index shows it: its node and revision."""
    rev = await env.peer.create(B, key, value)
    path = [decode_token(t)[0] for t in key.split(".")]

    async def shown() -> bool:
        return path[0] in await names(env)

    await until(shown, f"{key} in the index")
    ino = env.d
    for name in path:
        ino = (await env.core.lookup(ino, name, PID)).ino
    return env.core.node(ino), rev


async def history(peer: MemoryStore, bucket: str, key: str) -> list[tuple[int, bytes, str]]:
    """Every revision of ``key`` kept, oldest first: (revision, value, "PUT"/"DEL"/"PURGE")."""
    info = await peer.stream(f"KV_{bucket}")
    out = []
    for seq in range(max(info.first_seq, 1), info.last_seq + 1):
        try:
            m = await peer.get_msg(f"KV_{bucket}", seq)
        except NotFound:
            continue
        if m.subject == f"$KV.{bucket}.{key}":
            out.append((seq, m.data, m.headers.get("KV-Operation", "PUT")))
    return out


async def value(peer: MemoryStore, bucket: str, key: str) -> bytes | None:
    try:
        return (await peer.get(bucket, key)).value
    except NotFound:
        return None


async def close(core: Core, h: Handle) -> None:
    """close() of the only descriptor, then the kernel's release, as ops.py runs them."""
    await core.flush(h.fh)
    await core.release_flush(h.fh)
    core.release(h.fh)


async def write_file(env: Env, d: int, name: bytes, data: bytes) -> None:
    h = await env.core.create(d, name, CREAT | os.O_TRUNC, PID)
    await env.core.write(h.fh, 0, data)
    await close(env.core, h)


def conflicts_of(core: Core, key: str) -> list[Any]:
    return [c for c in core.conflicts.items.values() if c.key == key]


# -- open and read -------------------------------------------------------------------------


def test_open_reads_the_latest_value_without_waiting_for_the_watch():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"v1")
        r2 = await env.peer.update(B, "k", b"v2", node.revision)
        h = await env.core.open(node.ino, os.O_RDONLY, PID)
        assert await env.core.read(h.fh, 0, 100) == b"v2"
        assert h.base == r2
        env.core.release(h.fh)

    run(body)


def test_handle_content_is_fixed_at_open():
    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "k", b"before")
        h = await env.core.open(node.ino, os.O_RDONLY, PID)
        await env.peer.update(B, "k", b"after, longer", r1)
        await until(lambda: now(node.revision > r1), "the update in the index")
        assert await env.core.read(h.fh, 0, 100) == b"before"
        env.core.release(h.fh)

    run(body)


def test_open_of_a_key_deleted_elsewhere_is_enoent():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"v")
        await env.peer.delete(B, "k")
        await fails(errno.ENOENT, env.core.open(node.ino, os.O_RDONLY, PID))
        await fails(errno.ENOENT, env.core.lookup(env.d, b"k", PID))

    run(body)


def test_read_at_offsets():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"0123456789")
        h = await env.core.open(node.ino, os.O_RDONLY, PID)
        assert await env.core.read(h.fh, 3, 4) == b"3456"
        assert await env.core.read(h.fh, 8, 100) == b"89"
        assert await env.core.read(h.fh, 20, 5) == b""
        env.core.release(h.fh)

    run(body)


def test_write_to_a_read_only_handle_is_einval():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"v")
        h = await env.core.open(node.ino, os.O_RDONLY, PID)
        await fails(errno.EINVAL, env.core.write(h.fh, 0, b"x"))
        env.core.release(h.fh)
        assert await value(env.peer, B, "k") == b"v"

    run(body)


def test_open_of_a_directory_is_eisdir():
    async def body(env: Env) -> None:
        await fails(errno.EISDIR, env.core.open(env.d, os.O_RDONLY, PID))

    run(body)


# -- create at open ----------------------------------------------------------------------------


def test_create_puts_an_empty_key_before_it_returns():
    async def body(env: Env) -> None:
        h = await env.core.create(env.d, b"new", CREAT, PID)
        entry = await env.peer.get(B, "new")
        assert entry.value == b""
        assert h.base == entry.revision and h.created
        assert b"new" in await names(env)
        await close(env.core, h)
        assert [op for _, _, op in await history(env.peer, B, "new")] == ["PUT"]  # the close added nothing

    run(body)


def test_new_file_written_is_two_revisions_empty_then_content():
    async def body(env: Env) -> None:
        await write_file(env, env.d, b"f", b"content")
        assert [v for _, v, _ in await history(env.peer, B, "f")] == [b"", b"content"]

    run(body)


@pytest.mark.parametrize("known", [True, False], ids=["in-index", "not-yet-in-index"])
def test_exclusive_create_of_an_existing_key_is_eexist(known):
    async def body(env: Env) -> None:
        if known:
            await seeded(env, "k", b"theirs")
        else:
            await env.peer.create(B, "k", b"theirs")  # the watch may not have delivered it
        await fails(errno.EEXIST, env.core.create(env.d, b"k", CREAT | os.O_EXCL, PID))
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"theirs"]

    run(body)


def test_create_when_another_client_created_it_first_opens_that_one():
    async def body(env: Env) -> None:
        rev = await env.peer.create(B, "k", b"theirs")  # not awaited into the index
        h = await env.core.create(env.d, b"k", RDWR | os.O_CREAT, PID)
        assert not h.created and h.base == rev
        assert await env.core.read(h.fh, 0, 100) == b"theirs"
        await close(env.core, h)
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"theirs"]

    run(body)


def test_exclusive_create_has_one_winner_across_two_mounts():
    async def body(env: Env) -> None:
        other = Core(env.peer)
        await other.start()
        try:
            d2 = (await other.lookup((await other.lookup(1, b"kv", PID)).ino, B.encode(), PID)).ino
            results: list[Handle | HvfsError] = []

            async def claim(core: Core, d: int) -> None:
                try:
                    results.append(await core.create(d, b"claim", CREAT | os.O_EXCL, PID))
                except HvfsError as e:
                    results.append(e)

            async with trio.open_nursery() as n:
                n.start_soon(claim, env.core, env.d)
                n.start_soon(claim, other, d2)
            won = [r for r in results if isinstance(r, Handle)]
            lost = [r for r in results if isinstance(r, HvfsError)]
            assert len(won) == 1 and len(lost) == 1
            assert errno_of(lost[0]) == errno.EEXIST
            assert len(await history(env.peer, B, "claim")) == 1
        finally:
            await other.close()

    run(body)


def test_create_of_dot_value_at_a_bucket_root_is_einval():
    async def body(env: Env) -> None:
        await fails(errno.EINVAL, env.core.create(env.d, b".value", CREAT, PID))

    run(body)


def test_create_outside_a_bucket_directory_is_eperm():
    async def body(env: Env) -> None:
        await fails(errno.EPERM, env.core.create(1, b"f", CREAT, PID))
        kv = await env.core.lookup(1, b"kv", PID)
        await fails(errno.EPERM, env.core.create(kv.ino, b"f", CREAT, PID))

    run(body)


def test_create_over_a_delete_marker():
    async def body(env: Env) -> None:
        await seeded(env, "k", b"old")
        await env.peer.delete(B, "k")
        await until(lambda: absent(env, b"k"), "the delete in the index")
        h = await env.core.create(env.d, b"k", CREAT | os.O_EXCL, PID)
        assert (await env.peer.get(B, "k")).value == b""
        await env.core.write(h.fh, 0, b"again")
        await close(env.core, h)
        assert await value(env.peer, B, "k") == b"again"

    run(body)


# -- write, flush, close ----------------------------------------------------------------------


def test_write_and_flush_publish_one_revision_on_the_handles_base():
    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "k", b"v1")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 0, b"V2")
        assert await value(env.peer, B, "k") == b"v1"  # buffered until the flush
        await env.core.flush(h.fh)
        hist = await history(env.peer, B, "k")
        assert [v for _, v, _ in hist] == [b"v1", b"V2"]
        assert h.base == hist[-1][0] > r1
        assert node.revision == h.base and node.size == 2
        await env.core.release_flush(h.fh)
        env.core.release(h.fh)
        assert len(await history(env.peer, B, "k")) == 2

    run(body)


def test_each_flush_after_a_write_publishes_and_only_then():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 0, b"a")
        await env.core.flush(h.fh)
        await env.core.flush(h.fh)  # nothing written since: nothing published
        await env.core.write(h.fh, 1, b"b")
        await env.core.flush(h.fh, final=True)  # fsync
        await env.core.write(h.fh, 2, b"c")
        await env.core.flush(h.fh)
        await env.core.release_flush(h.fh)
        env.core.release(h.fh)
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"", b"a", b"ab", b"abc"]

    run(body)


def test_o_trunc_with_nothing_written_publishes_only_at_the_last_close():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"old")
        h = await env.core.open(node.ino, TRUNC, PID)
        await env.core.flush(h.fh)  # close() of the descriptor
        assert await value(env.peer, B, "k") == b"old"
        assert len(await history(env.peer, B, "k")) == 1
        await env.core.release_flush(h.fh)  # the handle's last close
        env.core.release(h.fh)
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"old", b""]

    run(body)


def test_o_trunc_then_write_is_one_revision_never_empty():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"old value")
        h = await env.core.open(node.ino, TRUNC, PID)
        await env.core.flush(h.fh)  # the shell closes the descriptor it opened ...
        await env.core.write(h.fh, 0, b"x\n")  # ... and echo writes to its copy
        await close(env.core, h)
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"old value", b"x\n"]

    run(body)


def test_write_past_the_end_zero_fills_the_gap():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"ab")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 5, b"z")
        assert await env.core.read(h.fh, 0, 100) == b"ab\0\0\0z"
        await close(env.core, h)
        assert await value(env.peer, B, "k") == b"ab\0\0\0z"

    run(body)


def test_append_goes_to_the_end_of_the_content_read_at_open():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"line1\n")
        h = await env.core.open(node.ino, RDWR | os.O_APPEND, PID)
        await env.core.write(h.fh, 0, b"line2\n")  # the kernel's offset may be stale: ignored
        await close(env.core, h)
        assert await value(env.peer, B, "k") == b"line1\nline2\n"

    run(body)


def test_ftruncate_is_a_change_of_the_handle_published_at_its_close():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"abcdef")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.set_size(node.ino, 2, h.fh)
        assert await value(env.peer, B, "k") == b"abcdef"
        assert env.core.size_of(node) == 2  # stat shows the handle's unpublished size
        await env.core.set_size(node.ino, 4, h.fh)
        await close(env.core, h)
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"abcdef", b"ab\0\0"]

    run(body)


@pytest.mark.parametrize("size", [3, 6], ids=["shrink", "same-size"])
def test_truncate_of_a_path_is_one_revision(size):
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"abcdef")
        await env.core.set_size(node.ino, size, None)
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"abcdef", b"abcdef"[:size]]

    run(body)


# -- a lost compare-and-swap -------------------------------------------------------------------


def test_lost_cas_is_estale_keeps_the_bytes_and_refuses_the_handle_for_good():
    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "k", b"v1")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 0, b"mine")
        r2 = await env.peer.update(B, "k", b"theirs", r1)
        await fails(errno.ESTALE, env.core.flush(h.fh))
        assert await value(env.peer, B, "k") == b"theirs"
        [c] = conflicts_of(env.core, "k")
        assert (c.data, c.bucket, c.base_revision, c.current_revision, c.errno) == \
            (b"mine", B, r1, r2, errno.ESTALE)
        await fails(errno.ESTALE, env.core.write(h.fh, 0, b"more"))
        await fails(errno.ESTALE, env.core.flush(h.fh))
        await fails(errno.ESTALE, env.core.flush(h.fh, final=True))
        await env.core.release_flush(h.fh)  # publishes nothing
        env.core.release(h.fh)
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"v1", b"theirs"]
        assert len(conflicts_of(env.core, "k")) == 1
        assert b'"errno": %d' % errno.ESTALE in env.core.conflicts.index()

    run(body)


def test_lost_cas_against_a_delete_elsewhere_is_estale():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"v1")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 0, b"mine")
        await env.peer.delete(B, "k")
        await fails(errno.ESTALE, env.core.flush(h.fh))
        env.core.release(h.fh)
        assert await value(env.peer, B, "k") is None
        assert [c.data for c in conflicts_of(env.core, "k")] == [b"mine"]

    run(body)


def test_o_trunc_write_after_a_known_newer_revision_is_estale():
    """The O_TRUNC open does not fetch: its base is the revision the index knows."""

    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "k", b"v1")
        h = await env.core.open(node.ino, TRUNC, PID)
        assert h.base == r1
        await env.peer.update(B, "k", b"theirs", r1)
        await env.core.write(h.fh, 0, b"mine")
        await fails(errno.ESTALE, env.core.flush(h.fh))
        env.core.release(h.fh)
        assert await value(env.peer, B, "k") == b"theirs"

    run(body)


def test_a_second_handle_of_the_same_process_loses_to_the_first():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"0")
        a = await env.core.open(node.ino, RDWR, PID)
        b = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(a.fh, 0, b"1")
        await env.core.write(b.fh, 0, b"2")
        await close(env.core, a)
        await fails(errno.ESTALE, env.core.flush(b.fh))
        env.core.release(b.fh)
        assert await value(env.peer, B, "k") == b"1"

    run(body)


# -- EFBIG ----------------------------------------------------------------------------------------


def test_a_value_at_the_limit_is_published():
    async def body(env: Env) -> None:
        d = await env.dir(SMALL)
        await write_file(env, d, b"k", b"x" * SMALL_LIMIT)
        assert await value(env.peer, SMALL, "k") == b"x" * SMALL_LIMIT

    run(body)


def test_efbig_at_write_refuses_the_handle_for_good_and_keeps_one_conflict():
    async def body(env: Env) -> None:
        d = await env.dir(SMALL)
        rev = await env.peer.create(SMALL, "k", b"old")
        node = await env.core.lookup(d, b"k", PID)
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 0, b"ab")
        await fails(errno.EFBIG, env.core.write(h.fh, 2, b"y" * (SMALL_LIMIT - 1)))
        await fails(errno.EFBIG, env.core.write(h.fh, 0, b"z"))
        await fails(errno.EFBIG, env.core.flush(h.fh))
        await fails(errno.EFBIG, env.core.flush(h.fh, final=True))
        await env.core.release_flush(h.fh)
        env.core.release(h.fh)
        entry = await env.peer.get(SMALL, "k")
        assert (entry.value, entry.revision) == (b"old", rev)
        [c] = conflicts_of(env.core, "k")
        assert c.errno == errno.EFBIG and c.bucket == SMALL
        assert c.data == b"ab" + b"y" * (SMALL_LIMIT - 1)  # what the handle would have held

    run(body)


def test_efbig_by_ftruncate_past_the_limit():
    async def body(env: Env) -> None:
        d = await env.dir(SMALL)
        await env.peer.create(SMALL, "k", b"old")
        node = await env.core.lookup(d, b"k", PID)
        h = await env.core.open(node.ino, RDWR, PID)
        await fails(errno.EFBIG, env.core.set_size(node.ino, SMALL_LIMIT + 1, h.fh))
        await fails(errno.EFBIG, env.core.flush(h.fh))
        env.core.release(h.fh)
        assert await value(env.peer, SMALL, "k") == b"old"
        assert len(conflicts_of(env.core, "k")) == 1

    run(body)


# -- NATS refuses, NATS away --------------------------------------------------------------------


def test_denied_create_is_eacces_and_leaves_no_file():
    async def body(env: Env) -> None:
        env.store.deny(f"$KV.{B}.>")
        await fails(errno.EACCES, env.core.create(env.d, b"x", CREAT, PID))
        await fails(errno.ENOENT, env.core.lookup(env.d, b"x", PID))
        assert b"x" not in await names(env)
        assert await value(env.peer, B, "x") is None

    run(body)


def test_denied_publish_is_eacces_keeps_the_bytes_and_refuses_the_handle():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"v1")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 0, b"mine")
        env.store.deny(f"$KV.{B}.>")
        await fails(errno.EACCES, env.core.flush(h.fh))
        await fails(errno.EACCES, env.core.write(h.fh, 0, b"x"))
        await fails(errno.EACCES, env.core.flush(h.fh))
        env.core.release(h.fh)
        assert await value(env.peer, B, "k") == b"v1"
        assert [(c.data, c.errno) for c in conflicts_of(env.core, "k")] == [(b"mine", errno.EACCES)]

    run(body)


def test_outage_open_create_flush_are_eio_and_work_after_reconnect():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"v1")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 0, b"mine")
        env.store.disconnect()
        await fails(errno.EIO, env.core.open(node.ino, os.O_RDONLY, PID))
        await fails(errno.EIO, env.core.create(env.d, b"new", CREAT, PID))
        await fails(errno.EIO, env.core.flush(h.fh))
        assert [c.data for c in conflicts_of(env.core, "k")] == [b"mine"]
        env.store.reconnect()
        await fails(errno.EIO, env.core.flush(h.fh))  # that handle is done
        env.core.release(h.fh)
        assert await value(env.peer, B, "k") == b"v1"
        await fails(errno.ENOENT, env.core.lookup(env.d, b"new", PID))  # the failed create left nothing
        h2 = await env.core.open(node.ino, os.O_RDONLY, PID)
        assert await env.core.read(h2.fh, 0, 10) == b"v1"
        env.core.release(h2.fh)
        await write_file(env, env.d, b"new", b"after")
        assert await value(env.peer, B, "new") == b"after"
        h3 = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h3.fh, 0, b"v2")
        await close(env.core, h3)
        assert await value(env.peer, B, "k") == b"v2"

    run(body)


def test_listing_during_an_outage_shows_the_last_known_state_and_catches_up():
    async def body(env: Env) -> None:
        await seeded(env, "stays", b"1")
        await seeded(env, "goes", b"2")
        env.store.disconnect()
        await env.peer.delete(B, "goes")
        await env.peer.create(B, "comes", b"3")
        assert await names(env) == [b"goes", b"stays"]
        env.store.reconnect()

        async def caught_up() -> bool:
            return await names(env) == [b"comes", b"stays"]

        await until(caught_up, "the resync after the reconnect")

    run(body)


# -- FILE@REV ---------------------------------------------------------------------------------------


def test_file_at_rev_reads_that_revision():
    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "a", b"one")
        r2 = await env.peer.update(B, "a", b"two", r1)
        for rev, want in ((r1, b"one"), (r2, b"two")):
            n = await env.core.lookup(env.d, b"a@%d" % rev, PID)
            h = await env.core.open(n.ino, os.O_RDONLY, PID)
            assert await env.core.read(h.fh, 0, 10) == want
            env.core.release(h.fh)
            assert await env.core.getxattr(n.ino, b"user.hvfs.revision", PID) == b"%d" % rev
        assert b"a@%d" % r1 not in await names(env)  # never listed

    run(body)


def test_file_at_rev_not_in_the_keys_history_is_enoent_when_read():
    async def body(env: Env) -> None:
        _, ra = await seeded(env, "a", b"one")
        _, rb = await seeded(env, "b", b"other")
        await fails(errno.ENOENT, env.core.lookup(env.d, b"a@999999", PID))
        await fails(errno.ENOENT, env.core.lookup(env.d, b"a@%d" % rb, PID))  # a revision of another key

    run(body)


def test_create_of_file_at_a_revision_not_current_is_estale():
    async def body(env: Env) -> None:
        _, r1 = await seeded(env, "a", b"one")
        await env.peer.update(B, "a", b"two", r1)
        await fails(errno.ESTALE, env.core.create(env.d, b"a@%d" % r1, CREAT | os.O_TRUNC, PID))
        await fails(errno.ESTALE, env.core.create(env.d, b"a@999999", CREAT | os.O_TRUNC, PID))
        assert await value(env.peer, B, "a") == b"two"

    run(body)


def test_write_of_file_at_the_current_revision_is_a_cas_on_it():
    async def body(env: Env) -> None:
        _, r1 = await seeded(env, "a", b"1")
        h = await env.core.create(env.d, b"a@%d" % r1, CREAT | os.O_TRUNC, PID)
        await env.core.write(h.fh, 0, b"2")
        await close(env.core, h)
        assert [v for _, v, _ in await history(env.peer, B, "a")] == [b"1", b"2"]

    run(body)


def test_file_at_rev_opened_then_moved_is_estale_at_open():
    async def body(env: Env) -> None:
        _, r1 = await seeded(env, "a", b"1")
        n = await env.core.lookup(env.d, b"a@%d" % r1, PID)
        await env.peer.update(B, "a", b"2", r1)
        await fails(errno.ESTALE, env.core.open(n.ino, TRUNC, PID))

    run(body)


def test_file_at_zero_creates_only_ifabsent():
    async def body(env: Env) -> None:
        h = await env.core.create(env.d, b"n@0", CREAT | os.O_TRUNC, PID)
        await env.core.write(h.fh, 0, b"first")
        await close(env.core, h)
        # created at open (empty), like any new file; the content follows at close
        assert [v for _, v, _ in await history(env.peer, B, "n")] == [b"", b"first"]
        await fails(errno.ESTALE, env.core.create(env.d, b"n@0", CREAT | os.O_TRUNC, PID))
        assert await value(env.peer, B, "n") == b"first"
        h = await env.core.create(env.d, b"e@0", CREAT | os.O_TRUNC, PID)  # `: > e@0`
        assert await value(env.peer, B, "e") == b""
        await close(env.core, h)
        assert [v for _, v, _ in await history(env.peer, B, "e")] == [b""]

    run(body)


# -- names, directories, unlink, rename -------------------------------------------------------------


@pytest.mark.parametrize("call", ["lookup", "create", "mkdir", "rename"])
def test_a_name_over_255_bytes_is_enametoolong(call):
    async def body(env: Env) -> None:
        core = env.core
        await seeded(env, "k", b"v")
        aw = {
            "lookup": lambda: core.lookup(env.d, LONG, PID),
            "create": lambda: core.create(env.d, LONG, CREAT, PID),
            "mkdir": lambda: core.mkdir(env.d, LONG, PID),
            "rename": lambda: core.rename(env.d, b"k", env.d, LONG, 0),
        }[call]()
        await fails(errno.ENAMETOOLONG, aw)
        assert await names(env) == [b"k"]
        assert await value(env.peer, B, "k") == b"v"

    run(body)


def test_a_name_of_255_bytes_is_fine():
    async def body(env: Env) -> None:
        name = b"n" * 255
        await write_file(env, env.d, name, b"v")
        assert await value(env.peer, B, name.decode()) == b"v"
        assert (await env.core.lookup(env.d, name, PID)).size == 1

    run(body)


def test_a_key_over_2048_characters_is_enametoolong():
    async def body(env: Env) -> None:
        d = env.d
        for i in range(8):  # 8 levels of 250 bytes: a key prefix of 2,007 characters
            d = (await env.core.mkdir(d, b"%d" % i + b"d" * 249, PID)).ino
        await fails(errno.ENAMETOOLONG, env.core.mkdir(d, b"d" * 41, PID))
        await fails(errno.ENAMETOOLONG, env.core.create(d, b"f" * 41, CREAT, PID))
        h = await env.core.create(d, b"f" * 40, CREAT, PID)  # 2,048: fits
        assert len(h.node.key) == 2048
        assert await value(env.peer, B, h.node.key) == b""
        env.core.release(h.fh)

    run(body)


def test_rename_of_a_directory():
    async def body(env: Env) -> None:
        core = env.core
        await seeded(env, "d1.x", b"1")
        await seeded(env, "d2.y", b"2")
        await seeded(env, "f", b"3")
        await core.mkdir(env.d, b"empty", PID)
        await fails(errno.ENOTEMPTY, core.rename(env.d, b"d1", env.d, b"d2", 0))
        await fails(errno.EXDEV, core.rename(env.d, b"d1", env.d, b"d3", 0))
        await fails(errno.EXDEV, core.rename(env.d, b"d1", env.d, b"empty", 0))
        await fails(errno.ENOTDIR, core.rename(env.d, b"d1", env.d, b"f", 0))
        assert await value(env.peer, B, "d1.x") == b"1"
        assert await names(env) == [b"d1", b"d2", b"empty", b"f"]

    run(body)


def test_rename_of_a_file_refusals():
    async def body(env: Env) -> None:
        core = env.core
        await seeded(env, "a", b"1")
        await seeded(env, "b", b"2")
        await seeded(env, "d.x", b"3")
        await fails(errno.EISDIR, core.rename(env.d, b"a", env.d, b"d", 0))
        await fails(errno.EEXIST, core.rename(env.d, b"a", env.d, b"b", 1))  # RENAME_NOREPLACE
        await fails(errno.EOPNOTSUPP, core.rename(env.d, b"a", env.d, b"b", 2))  # RENAME_EXCHANGE
        await fails(errno.ENOENT, core.rename(env.d, b"nope", env.d, b"c", 0))
        assert (await value(env.peer, B, "a"), await value(env.peer, B, "b")) == (b"1", b"2")

    run(body)


def test_rename_moves_the_value_then_deletes_the_old_key():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "a", b"payload")
        await env.core.rename(env.d, b"a", env.d, b"b", 0)
        assert await value(env.peer, B, "b") == b"payload"
        assert await value(env.peer, B, "a") is None
        assert [op for _, _, op in await history(env.peer, B, "a")] == ["PUT", "DEL"]  # history kept
        assert await names(env) == [b"b"]
        moved = await env.core.lookup(env.d, b"b", PID)
        assert moved is node and moved.key == "b"  # the kernel's inode moves to the new name

    run(body)


def test_rename_onto_an_existing_file_replaces_it():
    async def body(env: Env) -> None:
        await seeded(env, "a", b"new")
        await seeded(env, "b", b"old")
        await env.core.rename(env.d, b"a", env.d, b"b", 0)
        assert [v for _, v, _ in await history(env.peer, B, "b")] == [b"old", b"new"]
        assert await value(env.peer, B, "a") is None
        assert await names(env) == [b"b"]

    run(body)


def test_rename_across_buckets():
    async def body(env: Env) -> None:
        await seeded(env, "a", b"v")
        small = await env.dir(SMALL)
        await env.core.rename(env.d, b"a", small, b"moved", 0)
        assert await value(env.peer, SMALL, "moved") == b"v"
        assert await value(env.peer, B, "a") is None
        assert await names(env, small) == [b"moved"]

    run(body)


def test_rename_into_a_subdirectory_maps_to_the_nested_key():
    async def body(env: Env) -> None:
        await seeded(env, "a", b"v")
        sub = await env.core.mkdir(env.d, b"sub", PID)
        await env.core.rename(env.d, b"a", sub.ino, b"a", 0)
        assert await value(env.peer, B, "sub.a") == b"v"
        assert await value(env.peer, B, "a") is None

    run(body)


def test_unlink_writes_a_delete_marker_and_the_key_is_gone_for_the_peer():
    async def body(env: Env) -> None:
        await seeded(env, "k", b"v")
        await env.core.unlink(env.d, b"k", PID)
        assert await value(env.peer, B, "k") is None
        assert [(v, op) for _, v, op in await history(env.peer, B, "k")] == [(b"v", "PUT"), (b"", "DEL")]
        assert await names(env) == []
        await fails(errno.ENOENT, env.core.lookup(env.d, b"k", PID))
        await fails(errno.ENOENT, env.core.unlink(env.d, b"k", PID))

    run(body)


def test_unlink_of_a_directory_is_eisdir():
    async def body(env: Env) -> None:
        await seeded(env, "d.x", b"v")
        await fails(errno.EISDIR, env.core.unlink(env.d, b"d", PID))

    run(body)


def test_mkdir_is_local_until_a_key_is_written_below_it():
    async def body(env: Env) -> None:
        d = await env.core.mkdir(env.d, b"dir", PID)
        assert await names(env) == [b"dir"]
        assert (await env.peer.stream(f"KV_{B}")).last_seq == 0  # nothing in the store
        await fails(errno.EEXIST, env.core.mkdir(env.d, b"dir", PID))
        await write_file(env, d.ino, b"f", b"v")
        assert await value(env.peer, B, "dir.f") == b"v"

    run(body)


def test_rmdir():
    async def body(env: Env) -> None:
        core = env.core
        await seeded(env, "full.x", b"v")
        await seeded(env, "f", b"v")
        await core.mkdir(env.d, b"empty", PID)
        await fails(errno.ENOTEMPTY, core.rmdir(env.d, b"full", PID))
        await fails(errno.ENOTDIR, core.rmdir(env.d, b"f", PID))
        await fails(errno.ENOENT, core.rmdir(env.d, b"nope", PID))
        await core.rmdir(env.d, b"empty", PID)
        assert await names(env) == [b"f", b"full"]

    run(body)


def test_mkdir_outside_a_bucket_is_eperm_and_in_kv_makes_a_bucket():
    async def body(env: Env) -> None:
        await fails(errno.EPERM, env.core.mkdir(1, b"x", PID))
        kv = await env.core.lookup(1, b"kv", PID)
        await env.core.mkdir(kv.ino, b"fresh", PID)
        assert (await env.peer.bucket("fresh")).name == "fresh"
        await fails(errno.EEXIST, env.core.mkdir(kv.ino, b"fresh", PID))

    run(body)


# -- xattrs -------------------------------------------------------------------------------------------


def test_revision_xattr_is_fresh_for_a_process_without_a_handle():
    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "k", b"v1")
        assert await env.core.getxattr(node.ino, b"user.hvfs.revision", PID) == b"%d" % r1
        r2 = await env.peer.update(B, "k", b"v2", r1)  # the watch has not delivered it
        assert await env.core.getxattr(node.ino, b"user.hvfs.revision", PID) == b"%d" % r2
        assert await env.core.getxattr(node.ino, b"user.hvfs.revision", OTHER) == b"%d" % r2

    run(body)


def test_revision_xattr_is_the_handles_base_in_the_process_holding_it():
    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "k", b"v1")
        h = await env.core.open(node.ino, RDWR, PID)
        r2 = await env.peer.update(B, "k", b"v2", r1)
        await until(lambda: now(node.revision == r2), "the update in the index")
        assert await env.core.getxattr(node.ino, b"user.hvfs.revision", PID) == b"%d" % r1
        assert await env.core.getxattr(node.ino, b"user.hvfs.revision", OTHER) == b"%d" % r2
        h2 = await env.core.open(node.ino, os.O_RDONLY, PID)  # the most recently opened handle
        assert await env.core.getxattr(node.ino, b"user.hvfs.revision", PID) == b"%d" % r2
        env.core.release(h2.fh)
        assert await env.core.getxattr(node.ino, b"user.hvfs.revision", PID) == b"%d" % r1
        env.core.release(h.fh)
        assert await env.core.getxattr(node.ino, b"user.hvfs.revision", PID) == b"%d" % r2

    run(body)


def test_revision_xattr_after_a_publish_is_the_published_revision():
    async def body(env: Env) -> None:
        h = await env.core.create(env.d, b"k", CREAT, PID)
        created = (await env.peer.get(B, "k")).revision
        assert await env.core.getxattr(h.node.ino, b"user.hvfs.revision", PID) == b"%d" % created
        await env.core.write(h.fh, 0, b"x")
        await env.core.flush(h.fh)
        published = (await env.peer.get(B, "k")).revision
        assert published > created
        await env.peer.update(B, "k", b"theirs", published)
        assert await env.core.getxattr(h.node.ino, b"user.hvfs.revision", PID) == b"%d" % published
        env.core.release(h.fh)

    run(body)


def test_revision_xattr_of_a_key_deleted_elsewhere_is_enoent():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"v")
        await env.peer.delete(B, "k")
        await fails(errno.ENOENT, env.core.getxattr(node.ino, b"user.hvfs.revision", OTHER))

    run(body)


def test_bucket_and_key_xattrs_and_the_others():
    async def body(env: Env) -> None:
        core = env.core
        node, _ = await seeded(env, "d.f=2Ex", b"v")  # file "f.x" in directory "d"
        assert node.name == b"f.x"
        d = await core.lookup(env.d, b"d", PID)
        assert await core.getxattr(node.ino, b"user.hvfs.bucket", PID) == B.encode()
        assert await core.getxattr(node.ino, b"user.hvfs.key", PID) == b"d.f=2Ex"
        assert await core.getxattr(d.ino, b"user.hvfs.key", PID) == b"d"
        assert sorted(core.xattr_names(node)) == [b"user.hvfs.bucket", b"user.hvfs.error", b"user.hvfs.expires",
                                              b"user.hvfs.key", b"user.hvfs.pending", b"user.hvfs.revision",
                                              b"user.hvfs.stale", b"user.hvfs.ttl", b"user.hvfs.writer"]
        assert sorted(core.xattr_names(d)) == [b"user.hvfs.bucket", b"user.hvfs.key"]
        await fails(errno.ENODATA, core.getxattr(node.ino, b"user.other", PID))
        await fails(errno.ENODATA, core.getxattr(d.ino, b"user.hvfs.revision", PID))
        await fails(errno.EOPNOTSUPP, core.getxattr(node.ino, b"security.selinux", PID))
        await fails(errno.EOPNOTSUPP, core.getxattr(node.ino, b"system.posix_acl_access", PID))

    run(body)


# -- touch ----------------------------------------------------------------------------------------------


def test_touch_adds_one_revision_with_the_same_value():
    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "k", b"same")
        await env.core.touch(node.ino, PID)
        hist = await history(env.peer, B, "k")
        assert [v for _, v, _ in hist] == [b"same", b"same"]
        assert node.revision == hist[-1][0] > r1

    run(body)


def test_touch_adds_nothing_on_the_handle_that_created_the_key():
    async def body(env: Env) -> None:
        h = await env.core.create(env.d, b"k", CREAT, PID)
        await env.core.touch(h.node.ino, PID)
        assert len(await history(env.peer, B, "k")) == 1
        await env.core.write(h.fh, 0, b"content")
        await close(env.core, h)  # no ESTALE: the touch did not move the key
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"", b"content"]

    run(body)


def test_touch_adds_nothing_while_the_process_has_unpublished_changes():
    async def body(env: Env) -> None:
        node, _ = await seeded(env, "k", b"v")
        h = await env.core.open(node.ino, RDWR, PID)
        await env.core.write(h.fh, 0, b"w")
        await env.core.touch(node.ino, PID)
        assert len(await history(env.peer, B, "k")) == 1
        await close(env.core, h)
        assert [v for _, v, _ in await history(env.peer, B, "k")] == [b"v", b"w"]

    run(body)


def test_touch_by_another_process_is_a_heartbeat():
    async def body(env: Env) -> None:
        h = await env.core.create(env.d, b"k", CREAT, PID)
        await env.core.touch(h.node.ino, OTHER)
        assert len(await history(env.peer, B, "k")) == 2
        env.core.release(h.fh)

    run(body)


# -- the index, kept by the watch ----------------------------------------------------------------------


def test_a_peer_put_appears_in_the_listing_and_a_peer_delete_removes_it():
    async def body(env: Env) -> None:
        await env.peer.create(B, "w", b"x")

        async def listed() -> bool:
            return b"w" in await names(env)

        await until(listed, "the peer's key in the listing")
        await env.peer.delete(B, "w")
        await until(lambda: absent(env, b"w"), "the peer's delete in the listing")

    run(body)


def test_a_peer_put_of_a_nested_key_makes_its_directory_and_the_delete_prunes_it():
    async def body(env: Env) -> None:
        await env.peer.create(B, "x.y.z", b"v")

        async def listed() -> bool:
            return b"x" in await names(env)

        await until(listed, "directory x")
        x = await env.core.lookup(env.d, b"x", PID)
        y = await env.core.lookup(x.ino, b"y", PID)
        assert await names(env, y.ino) == [b"z"]
        await env.peer.delete(B, "x.y.z")
        await until(lambda: absent(env, b"x"), "directory x pruned")

    run(body)


def test_a_peer_update_moves_the_index_revision_and_size():
    async def body(env: Env) -> None:
        node, r1 = await seeded(env, "k", b"1")
        r2 = await env.peer.update(B, "k", b"1234", r1)
        await until(lambda: now(node.revision == r2), "the update in the index")
        assert env.core.size_of(node) == 4

    run(body)


def test_a_local_write_is_listed_at_once():
    async def body(env: Env) -> None:
        await write_file(env, env.d, b"mine", b"v")
        assert await names(env) == [b"mine"]
        node = await env.core.lookup(env.d, b"mine", PID)
        assert node.revision == (await env.peer.get(B, "mine")).revision and node.size == 1

    run(body)


def test_lookup_finds_a_key_the_watch_has_not_delivered():
    async def body(env: Env) -> None:
        await env.peer.create(B, "fresh", b"v")
        node = await env.core.lookup(env.d, b"fresh", PID)
        assert node.key == "fresh"

    run(body)
