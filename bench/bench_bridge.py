#!/usr/bin/env python
"""Where a mount read/write spends its time, without FUSE: the trio->asyncio bridge.

Times, against its own nats-server, in one process:

* raw nats-py ``kv.get`` / ``kv.update`` / ``js.publish`` on a plain asyncio loop (what bench_kv.py calls "raw"),
* ``hvfs.store.nats.NatsStore.get`` / ``.update`` / ``.publish`` called from trio (the mount's path to NATS:
  run_coroutine_threadsafe onto the store's asyncio thread, woken back by TrioToken.run_sync_soon),
* ``Core.open`` + ``Core.read`` + ``Core.release`` and ``Core.open(O_TRUNC)`` + ``write`` +
  ``flush`` + ``release`` (the mount's handlers minus the kernel),
* a bare trio->asyncio->trio round trip with no NATS in it (the bridge alone).

    .venv/bin/python bench/bench_bridge.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import trio  # noqa: E402

from hvfs.config import Binding, ConnectOptions, MountConfig  # noqa: E402
from hvfs.errors import NotFound  # noqa: E402
from hvfs.server import EmbeddedServer  # noqa: E402
from hvfs.store.nats import NatsStore  # noqa: E402
from hvfs.vfs.core import Core  # noqa: E402

VALUE = b"v" * 100


def pct(s: list[float], q: float) -> float:
    s = sorted(s)
    return s[max(0, min(len(s) - 1, int(q * len(s) + 0.999999) - 1))]


def row(label: str, s: list[float]) -> str:
    return f"{label:<58} {pct(s, 0.5):8.0f} {pct(s, 0.99):8.0f}"


async def raw_part(url: str, n: int, w: int) -> dict[str, list[float]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="b", history=10, direct=True)
    for k in ("r", "w_raw", "w_store", "w_core"):
        await kv.put(k, VALUE)
    out: dict[str, list[float]] = {"get": [], "update": [], "publish": []}
    for i in range(n + w):
        t0 = time.perf_counter_ns()
        await kv.get("r")
        if i >= w:
            out["get"].append((time.perf_counter_ns() - t0) / 1e3)
    rev = (await kv.get("w_raw")).revision
    for i in range(n + w):
        t0 = time.perf_counter_ns()
        rev = await kv.update("w_raw", VALUE, last=rev)
        if i >= w:
            out["update"].append((time.perf_counter_ns() - t0) / 1e3)
    await js.add_stream(name="PUB", subjects=["pub.>"])
    for i in range(n + w):
        t0 = time.perf_counter_ns()
        await js.publish("pub.raw", VALUE, stream="PUB", headers={"Nats-Msg-Id": f"raw-{i}"})
        if i >= w:
            out["publish"].append((time.perf_counter_ns() - t0) / 1e3)
    await nc.close()
    return out


async def trio_part(url: str, n: int, w: int) -> dict[str, list[float]]:
    store = NatsStore(ConnectOptions(servers=[url]))
    await store.start()
    out: dict[str, list[float]] = {k: [] for k in ("bridge", "get", "update", "publish", "core_read",
                                                   "core_write")}
    try:
        async def nop() -> None:
            return None

        async def timed(key: str, fn: Any) -> None:
            for i in range(n + w):
                t0 = time.perf_counter_ns()
                await fn()
                if i >= w:
                    out[key].append((time.perf_counter_ns() - t0) / 1e3)

        await timed("bridge", lambda: store._call("nop", nop()))

        # The same get, split where it crosses threads: trio -> asyncio, on the loop, asyncio -> trio.
        marks: dict[str, int] = {}
        js = store._js

        async def marked_get() -> Any:
            marks["start"] = time.perf_counter_ns()
            msg = await js.get_msg("KV_b", subject="$KV.b.r", direct=True)
            marks["end"] = time.perf_counter_ns()
            return msg

        for k in ("seg_submit", "seg_loop", "seg_resume"):
            out[k] = []
        for i in range(n + w):
            t0 = time.perf_counter_ns()
            await store._call("get", marked_get())
            t1 = time.perf_counter_ns()
            if i >= w:
                out["seg_submit"].append((marks["start"] - t0) / 1e3)
                out["seg_loop"].append((marks["end"] - marks["start"]) / 1e3)
                out["seg_resume"].append((t1 - marks["end"]) / 1e3)
        await timed("get", lambda: store.get("b", "r"))
        rev = (await store.get("b", "w_store")).revision

        async def upd() -> None:
            nonlocal rev
            rev = await store.update("b", "w_store", VALUE, rev)

        await timed("update", upd)
        pubs = iter(range(10**9))
        await timed("publish", lambda: store.publish("pub.store", VALUE, "PUB", f"store-{next(pubs)}"))
        core = Core(store, MountConfig(bindings=[Binding(path="b", kv="b", create=False)], raw=False))
        await core.start()
        root = core.tree.root.children[b"b"]  # type: ignore[index]
        rnode = root.children[b"r"]  # type: ignore[index]
        wnode = root.children[b"w_core"]  # type: ignore[index]

        async def core_read() -> None:
            h = await core.open(rnode.ino, os.O_RDONLY)
            await core.read(h.fh, 0, 65536)
            core.release(h.fh)

        async def core_write() -> None:
            h = await core.open(wnode.ino, os.O_WRONLY | os.O_TRUNC)
            await core.write(h.fh, 0, VALUE)
            await core.flush(h.fh)
            core.release(h.fh)

        await timed("core_read", core_read)
        await timed("core_write", core_write)
        await core.close()

        # A stream publish as the kernel asks for it: LOOKUP (absent), CREATE, WRITE, FLUSH, RELEASE.
        core = Core(store, MountConfig(raw=True))
        await core.start()
        d = core.tree.root
        for name in (b"streams", b"PUB", b"pub"):
            d = await core.lookup(d.ino, name)
        d = await core.mkdir(d.ino, b"core")
        names = iter(range(10**9))

        async def core_publish() -> None:
            name = f"f{next(names)}".encode()
            with contextlib.suppress(NotFound):
                await core.lookup(d.ino, name)
            h = await core.create(d.ino, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            await core.write(h.fh, 0, VALUE)
            await core.flush(h.fh)
            core.release(h.fh)

        out["core_publish"] = []
        await timed("core_publish", core_publish)
        await core.close()
    finally:
        await store.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hvfs-bridge-") as tmp:
        srv = EmbeddedServer(Path(tmp) / "nats")
        srv.start()
        try:
            raw = asyncio.run(raw_part(srv.url, a.n, a.warmup))
            tr = trio.run(trio_part, srv.url, a.n, a.warmup)
        finally:
            srv.stop()
    print(f"{'latency (us), n=' + str(a.n):<58} {'median':>8} {'p99':>8}")
    print(row("raw nats-py kv.get (asyncio)", raw["get"]))
    print(row("NatsStore.get from trio (bridge + get)", tr["get"]))
    print(row("Core.open+read+release (no kernel; 1 NATS get)", tr["core_read"]))
    print(row("raw nats-py kv.update (asyncio)", raw["update"]))
    print(row("NatsStore.update from trio (bridge + update)", tr["update"]))
    print(row("Core.open(O_TRUNC)+write+flush+release (get + update)", tr["core_write"]))
    print(row("raw nats-py js.publish with Nats-Msg-Id (asyncio)", raw["publish"]))
    print(row("NatsStore.publish from trio (bridge + publish)", tr["publish"]))
    print(row("Core lookup+create+write+flush+release in streams/ (1 publish)", tr["core_publish"]))
    print(row("bridge alone: trio -> asyncio thread -> trio, no NATS", tr["bridge"]))
    print("NatsStore get split at the thread crossings:")
    print(row("  trio call -> coroutine starts on the store's loop", tr["seg_submit"]))
    print(row("  js.get_msg on the store's loop", tr["seg_loop"]))
    print(row("  coroutine done -> trio caller resumes", tr["seg_resume"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
