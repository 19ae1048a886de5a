#!/usr/bin/env python
"""Failover through an hvfs mount: a 3-node JetStream cluster loses the node the mount uses.

One run starts, on loopback only, and stops again (by PID, in ``finally``):

* three nats-servers (``hvfs.server.EmbeddedServer`` with cluster routes,
  ``sync_interval: always``, separate store dirs, monitoring ports),
* an ``hvfs mount`` subprocess whose config binds ``data/`` to the KV bucket
  ``failover`` with ``replicas: 3`` (hvfs creates it R3), given either one
  node's URL (``--urls one``) or all three (``--urls all``),
* a writer subprocess that loops ``open(O_WRONLY|O_CREAT|O_TRUNC)`` +
  ``write(i)`` + ``close`` on ``data/counter`` (what ``echo $i > counter``
  does) and records each call's start, end and errno.

After ``--before`` seconds the bench SIGKILLs the node the mount is connected
to (found in each node's ``/connz``). With ``--leader connected`` (the
default) it first moves the bucket's stream leader onto that node, so the kill
also costs a leader election: the worst case; ``--leader other`` moves it off,
so the kill costs only the client's reconnect. It then prints the longest gap
between acknowledged writes, the errors the writer saw (errno), throughput
before / during / after, a per-second timeline, and whether the last
acknowledged value is what the surviving nodes and the mount hold.
Finally it restarts the killed node and times its catch-up.

Usage::

    .venv/bin/python bench/bench_failover.py [--urls one|all|both] [--before 5] [--after 10]
"""

# The bench drives blocking subprocesses and file I/O from one asyncio loop on purpose.
# ruff: noqa: ASYNC220, ASYNC221, ASYNC230, ASYNC251

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

from hvfs.server import EmbeddedServer, free_port  # noqa: E402
from tests.helpers import Mount  # noqa: E402

BUCKET = "failover"
STREAM = f"KV_{BUCKET}"
CONFIG = f"""\
raw: false
bindings:
  - path: data
    kv: {BUCKET}
    replicas: 3
    history: 10
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the writer (a child process: a hung FUSE call must not hang the bench) ---------------


def writer_child(path: str, seconds: float, out: str) -> int:
    """Loop writes of i to ``path`` for ``seconds``; write one JSON line per call to ``out``."""
    rows: list[tuple[float, float, int, int]] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        t0 = time.monotonic()
        err = 0
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{i}\n".encode())
            finally:
                os.close(fd)  # the publish: 0 only when NATS acknowledged it
        except OSError as e:
            err = e.errno or -1
        rows.append((t0, time.monotonic(), i, err))
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return 0


# -- the cluster ----------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    srv: EmbeddedServer
    http: int

    def get(self, what: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/{what}", timeout=2) as r:
            return dict(json.load(r))

    def alive(self) -> bool:
        return self.srv.proc is not None and self.srv.proc.poll() is None


class Cluster:
    def __init__(self, tmp: Path, size: int = 3) -> None:
        routes = [free_port() for _ in range(size)]
        route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
        self.nodes: list[Node] = []
        for i, rport in enumerate(routes):
            http = free_port()
            args = ["-n", f"n{i + 1}", "--cluster_name", "hvfs-failover",
                    "--cluster", f"nats://127.0.0.1:{rport}", "--routes", route_urls,
                    "-m", str(http)]
            self.nodes.append(Node(f"n{i + 1}", EmbeddedServer(tmp / f"n{i + 1}", extra_args=args), http))

    def start(self) -> None:
        for n in self.nodes:
            n.srv.start()

    def stop(self) -> None:
        for n in self.nodes:
            n.srv.stop()

    def by_name(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def mount_node(self) -> str | None:
        """The node holding the mount's connection (name "hvfs" in /connz)."""
        for n in self.nodes:
            if not n.alive():
                continue
            with contextlib.suppress(OSError, ValueError):
                if any(c.get("name") == "hvfs" for c in n.get("connz").get("connections") or []):
                    return n.name
        return None


async def wait_ready(urls: list[str], deadline: float) -> Any:
    """A client once the cluster has a JetStream meta leader (account info answers)."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(servers=urls, connect_timeout=2)
            try:
                await nc.jetstream(timeout=2).account_info()
                return nc
            except Exception:
                await nc.close()
                raise
        except Exception as e:
            last = e
            await asyncio.sleep(0.25)
    raise RuntimeError(f"cluster not ready: {last!r}")


async def stream_leader(js: Any) -> str | None:
    info = await js.stream_info(STREAM)
    return info.cluster.leader if info.cluster else None


async def move_leader(nc: Any, js: Any, node: str, onto: bool, deadline: float) -> bool:
    """Step the stream leader down until ``node`` leads (``onto``) or does not (each step-down
    elects at random)."""
    while time.monotonic() < deadline:
        if (await stream_leader(js) == node) == onto:
            return True
        with contextlib.suppress(Exception):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", b"", timeout=3)
        await asyncio.sleep(1.0)
    return (await stream_leader(js) == node) == onto


# -- one scenario ---------------------------------------------------------------------------


@dataclass
class Result:
    urls: str
    killed: str = ""
    killed_was_leader: bool = False
    new_leader: str | None = None
    reconnected_to: str | None = None
    rows: list[tuple[float, float, int, int]] = field(default_factory=list)
    t_kill: float = 0.0
    last_acked: int = 0
    held: dict[str, str] = field(default_factory=dict)
    catch_up: float | None = None
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def scenario(a: argparse.Namespace, tmp: Path, urls_mode: str) -> Result:
    res = Result(urls=urls_mode)
    cluster = Cluster(tmp / "cluster")
    mount: Mount | None = None
    writer: subprocess.Popen[bytes] | None = None
    loop = asyncio.new_event_loop()
    nc: Any = None
    try:
        cluster.start()
        all_urls = [n.srv.url for n in cluster.nodes]
        target = cluster.nodes[0]
        server_arg = target.srv.url if urls_mode == "one" else ",".join(all_urls)
        deadline = time.monotonic() + 30
        nc = loop.run_until_complete(wait_ready(all_urls, deadline))
        js = nc.jetstream(timeout=5)
        conf = tmp / "failover.yml"
        conf.write_text(CONFIG)
        mount = Mount(tmp / "mnt" / "m", server_arg, "--config", str(conf), "--writer", "bench",
                      *a.mount_arg, log=tmp / "mount.log")
        mount.start(timeout=30)
        info = loop.run_until_complete(js.stream_info(STREAM))
        if info.config.num_replicas != 3:
            res.notes.append(f"bucket has {info.config.num_replicas} replicas, not 3")
        connected = cluster.mount_node()
        if connected is None:
            raise RuntimeError("no node reports the mount's connection")
        victim = cluster.by_name(connected)
        if a.leader != "any":
            onto = a.leader == "connected"
            if not loop.run_until_complete(move_leader(nc, js, victim.name, onto, time.monotonic() + 20)):
                res.notes.append(f"could not move the stream leader {'onto' if onto else 'off'} {victim.name}")
        leader = loop.run_until_complete(stream_leader(js))
        res.killed, res.killed_was_leader = victim.name, leader == victim.name
        log(f"[{urls_mode}] mount on {victim.name}, stream leader {leader}; writer starts")

        # The client that checks afterwards must not sit on the node that dies.
        loop.run_until_complete(nc.close())
        nc = loop.run_until_complete(wait_ready([n.srv.url for n in cluster.nodes if n is not victim],
                                                time.monotonic() + 10))
        js = nc.jetstream(timeout=5)

        out = tmp / "writer.jsonl"
        total = a.before + a.after
        writer = subprocess.Popen([sys.executable, __file__, "--child-writer", str(mount.path("data", "counter")),
                                   str(total), str(out)], stdin=subprocess.DEVNULL)
        t_start = time.monotonic()
        time.sleep(a.before)
        assert victim.srv.proc is not None
        res.t_kill = time.monotonic()
        os.kill(victim.srv.proc.pid, signal.SIGKILL)  # a process this bench started
        victim.srv.proc.wait(5)
        victim.srv.proc = None
        log(f"[{urls_mode}] SIGKILL {victim.name}")
        try:
            writer.wait(total - (time.monotonic() - t_start) + 30)
        except subprocess.TimeoutExpired:
            res.notes.append("writer did not finish within its time + 30 s: killed")
            writer.kill()
            writer.wait(5)
        res.rows = [tuple(json.loads(line)) for line in out.read_text().splitlines()]  # type: ignore[misc]
        acked = [r for r in res.rows if r[3] == 0]
        res.last_acked = acked[-1][2] if acked else 0
        res.reconnected_to = cluster.mount_node()
        res.new_leader = loop.run_until_complete(stream_leader(js))

        # Is the last acknowledged value what the cluster and the mount hold?
        kv = loop.run_until_complete(js.key_value(BUCKET))
        res.held["cluster"] = loop.run_until_complete(kv.get("counter")).value.decode().strip()
        res.held["mount"] = mount.path("data", "counter").read_text().strip()
        # A write that timed out may still land: the mount records the outcome when it knows.
        time.sleep(1.0)
        index = mount.path(".hvfs", "conflicts", "index")
        res.conflicts = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]

        # The killed node back: how long until it serves the last value itself.
        victim.srv.start()
        t0 = time.monotonic()
        res.catch_up = loop.run_until_complete(catch_up(victim.srv.url, str(res.last_acked), t0 + 30))
        return res
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait(5)
        if nc is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(nc.close(), 5))
        loop.close()
        if mount is not None:
            mount.stop()
        cluster.stop()


async def catch_up(url: str, want: str, deadline: float) -> float | None:
    """Seconds until a stream get on the node at ``url`` (its own replica) returns ``want``."""
    t0 = time.monotonic()
    nc = await nats.connect(servers=[url], connect_timeout=2, allow_reconnect=False)
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                # A direct get is answered by any replica, this one included once it is current.
                m = await nc.request(f"$JS.API.DIRECT.GET.{STREAM}.$KV.{BUCKET}.counter", b"", timeout=1)
                if m.data.decode().strip() == want and not (m.headers or {}).get("Status"):
                    return time.monotonic() - t0
            await asyncio.sleep(0.05)
        return None
    finally:
        await nc.close()


# -- the report -----------------------------------------------------------------------------


def report(res: Result, a: argparse.Namespace) -> None:
    rows, tk = res.rows, res.t_kill
    ok = [r for r in rows if r[3] == 0]
    extra = f" {' '.join(a.mount_arg)}" if a.mount_arg else ""
    print(f"\n== --server with {'one node URL' if res.urls == 'one' else 'all three URLs'}{extra}: "
          f"killed {res.killed} (mount's node{', stream leader' if res.killed_was_leader else ''}); "
          f"new leader {res.new_leader}, mount now on {res.reconnected_to}")
    if not ok:
        print("no write was acknowledged")
        return
    # The pause: the longest time without an acknowledged write; it ends with the recovery.
    ends = [r[1] for r in ok]
    gaps = [(b - a_, a_, b) for a_, b in zip(ends, ends[1:], strict=False)]
    longest, at, recovered = max(gaps) if gaps else (0.0, ends[0], ends[0])
    print(f"writes {len(rows)}, acknowledged {len(ok)}, failed {len(rows) - len(ok)}")
    print(f"longest gap between acknowledged writes: {longest * 1000:.0f} ms "
          f"(from {at - tk:+.2f} s to {recovered - tk:+.2f} s from the kill)")
    errs = Counter(errno.errorcode.get(r[3], str(r[3])) for r in rows if r[3])
    print(f"errors seen by the writer: {dict(errs) or 'none'}")
    slow = [r for r in rows if r[1] - r[0] > 0.1]
    if slow:
        worst = max(slow, key=lambda r: r[1] - r[0])
        print(f"calls slower than 100 ms: {len(slow)}; slowest {(worst[1] - worst[0]) * 1000:.0f} ms "
              f"({'ok' if worst[3] == 0 else errno.errorcode.get(worst[3], worst[3])})")

    def rate(lo: float, hi: float) -> str:
        n = sum(1 for r in ok if lo <= r[1] < hi)
        return f"{n / (hi - lo):.0f}/s" if hi - lo >= 1 else "-"

    t_first, t_last = rows[0][0], rows[-1][1]
    settled = max(recovered, tk) + 1.0
    print(f"acknowledged writes per second: before the kill {rate(t_first, tk)}, "
          f"from the kill to 1 s after the gap {rate(tk, settled)}, then {rate(settled, t_last)}")
    line = []
    for s in range(-2, int(a.after)):
        lo = tk + s
        n_ok = sum(1 for r in ok if lo <= r[1] < lo + 1)
        n_err = sum(1 for r in rows if r[3] and lo <= r[1] < lo + 1)
        line.append(f"{s:+d}s:{n_ok}" + (f"/{n_err}err" if n_err else ""))
    print("per second from the kill: " + " ".join(line))
    if res.conflicts:
        kinds = Counter((errno.errorcode.get(int(c.get("errno") or 0), str(c.get("errno"))),
                         str(c.get("outcome", "-"))) for c in res.conflicts)
        print("conflicts kept by the mount (errno, outcome of a timed-out write): "
              + ", ".join(f"{e} {o}: {n}" for (e, o), n in kinds.items()))
        for c in res.conflicts[:2]:
            print(f"  e.g. {c.get('reason')}")
    verdict = "yes" if all(v == str(res.last_acked) for v in res.held.values()) else "NO"
    print(f"last acknowledged value {res.last_acked}; held: {res.held} -> kept: {verdict}")
    if res.catch_up is not None:
        print(f"killed node restarted: serves the last value after {res.catch_up * 1000:.0f} ms")
    else:
        print("killed node restarted: did not serve the last value within 30 s")
    for n in res.notes:
        print(f"note: {n}")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-writer":
        return writer_child(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--urls", choices=["one", "all", "both"], default="both",
                    help="the mount's --server: the killed node's URL only, all three, or a run of each")
    ap.add_argument("--leader", choices=["connected", "other", "any"], default="connected",
                    help="move the bucket's stream leader onto the node that dies (connected), off it "
                         "(other: the kill costs only the client's reconnect), or leave it (any)")
    ap.add_argument("--before", type=float, default=5.0, help="seconds of writes before the kill")
    ap.add_argument("--after", type=float, default=15.0, help="seconds of writes after the kill")
    ap.add_argument("--mount-arg", action="append", default=[],
                    help="an extra hvfs mount argument (repeat; e.g. --mount-arg=--timeout --mount-arg=10)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    a = ap.parse_args()
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        log("/dev/fuse is not available")
        return 2
    for mode in (["one", "all"] if a.urls == "both" else [a.urls]):
        tmp = Path(tempfile.mkdtemp(prefix=f"hvfs-failover-{mode}-", dir="/var/tmp"))
        try:
            report(scenario(a, tmp, mode), a)
        finally:
            if a.keep:
                log(f"kept {tmp}")
            else:
                subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
