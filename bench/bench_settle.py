#!/usr/bin/env python
"""Settlement to git (docs/settle.md): 10,000 keys, beside ``git add -A && git commit``.

The targets (issue 11): 10,000 keys settle in under 10 s the first time; an
unchanged re-settle in under 1 s; a re-settle after 100 changed keys in under 2 s.

One run starts what it measures and stops it again (by PID): a nats-server
(``hvfs.server.EmbeddedServer``) with its store in a temp dir, and bare git
repositories in the same temp dir. ``--keys`` typed issues (format yaml, schema
issue: what the fleet settles) are put into bucket ``bs_issues``, then:

* **settle (in process)**: ``Settler.settle()`` on a ``NatsStore``, as the mount's
  periodic settler runs it: first settlement, unchanged re-settle, re-settle after
  ``--changed`` keys were rewritten.
* **hvfs settle (CLI)**: the same three steps as ``hvfs settle --server URL`` into
  another repository: a new process each time (Python start-up, imports,
  connecting, reading the branch).
* **git add -A && git commit**: the yardstick; the same files (the YAML the
  mount shows) written to a directory, committed by the git CLI; unchanged: the
  same command with nothing to commit; changed: the same files rewritten first.

Medians of ``--rounds`` runs for the re-settles. It prints numbers and never asserts::

    .venv/bin/python bench/bench_settle.py               # about 30 s
    .venv/bin/python bench/bench_settle.py --keys 2000   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import trio  # noqa: E402
from nats.js.api import KeyValueConfig  # noqa: E402

from hvfs.codec import Codec, Context  # noqa: E402
from hvfs.config import ConnectOptions, load_config  # noqa: E402
from hvfs.entities import Issue  # noqa: E402
from hvfs.server import EmbeddedServer  # noqa: E402
from hvfs.settle import Settler  # noqa: E402
from hvfs.store.nats import NatsStore  # noqa: E402

BUCKET = "bs_issues"
CONFIG = f"""\
# bench/bench_settle.py
raw: false
bindings:
  - path: issues
    kv: {BUCKET}
    format: yaml
    schema: issue
    history: 5
settle:
  repo: REPO
  paths:
    - path: issues
"""


def issue(i: int, rev: int) -> bytes:
    codec = Codec("yaml", Issue)
    text = (f"title: Issue number {i}, revision {rev}\nstatus: open\npriority: {i % 5}\n"
            f"labels: [bench, l{i % 7}]\ndescription: |\n  A description of issue {i}\n  on two lines.\n"
            "created_at: '2026-01-01T00:00:00Z'\nupdated_at: '2026-01-01T00:00:00Z'\n")
    return codec.store(text.encode(), Context(f"is-{i}"))


async def put_all(url: str, items: list[tuple[str, bytes]], create: bool) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    if create:
        await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=5))
    kv = await js.key_value(BUCKET)
    for i in range(0, len(items), 500):
        await asyncio.gather(*(kv.put(k, v) for k, v in items[i:i + 500]))
    await nc.close()


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    logging.getLogger("hvfs.store.nats").setLevel(logging.ERROR)  # "disconnected" at each close
    tmp = Path(tempfile.mkdtemp(prefix="bench-settle-"))
    srv = EmbeddedServer(tmp / "nats")
    srv.start()
    rows: list[tuple[str, float, float, float]] = []
    try:
        keys = [f"is-{i}" for i in range(a.keys)]
        t = time.perf_counter()
        asyncio.run(put_all(srv.url, [(k, issue(i, 0)) for i, k in enumerate(keys)], True))
        print(f"{a.keys} issues put in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        repo, repo_cli = tmp / "settle.git", tmp / "cli.git"
        for r in (repo, repo_cli):
            git("init", "-q", "--bare", str(r))
        cfg_path = tmp / "settle.yml"
        cfg_path.write_text(CONFIG.replace("REPO", str(repo)))
        config = load_config(cfg_path)
        assert config.settle is not None
        rounds = max(1, a.rounds)
        changes = iter(range(1, 10_000))

        def change() -> None:
            rev = next(changes)
            asyncio.run(put_all(srv.url, [(keys[(rev * 37 + j) % a.keys], issue(j, rev))
                                          for j in range(a.changed)], False))

        # -- in process
        async def in_process() -> tuple[float, list[float], list[float]]:
            store = NatsStore(ConnectOptions(servers=[srv.url], timeout=10))
            await store.start()
            try:
                st = Settler(store, config, config.settle)
                t0 = time.perf_counter()
                out = await st.settle()
                first = time.perf_counter() - t0
                assert out.commit and out.changed == a.keys, out
                same, changed = [], []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    out = await st.settle()
                    same.append(time.perf_counter() - t0)
                    assert out.commit is None, out
                    await trio.to_thread.run_sync(change)
                    t0 = time.perf_counter()
                    out = await st.settle()
                    changed.append(time.perf_counter() - t0)
                    assert out.commit and out.changed == a.changed, out
                return first, same, changed
            finally:
                await store.close()

        first, same, changed = trio.run(in_process)
        rows.append(("settle (in process)", first, statistics.median(same), statistics.median(changed)))

        # -- the CLI, a process per settlement
        hvfs = [sys.executable, "-m", "hvfs", "settle", "--server", srv.url, "--config", str(cfg_path),
                "--repo", str(repo_cli)]

        def cli(expect_commit: bool) -> None:
            out = subprocess.run(hvfs, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
            assert (out != "nothing changed") == expect_commit, out

        first = timed(lambda: cli(True))
        same, changed = [], []
        for _ in range(rounds):
            same.append(timed(lambda: cli(False)))
            change()
            changed.append(timed(lambda: cli(True)))
        rows.append(("hvfs settle (CLI)", first, statistics.median(same), statistics.median(changed)))

        # -- the yardstick: the same files, git add -A && git commit
        work = tmp / "work"
        (work / "issues").mkdir(parents=True)
        git("init", "-q", str(work))
        git("config", "user.email", "bench@localhost", cwd=work)
        git("config", "user.name", "bench", cwd=work)
        codec = Codec("yaml", Issue)
        revs = {k: 0 for k in keys}

        def write(idx: list[int]) -> None:
            for i in idx:
                (work / "issues" / f"{keys[i]}.yml").write_bytes(codec.show(issue(i, revs[keys[i]]))[0])

        def commit(allow_empty_fail: bool = False) -> None:
            r = subprocess.run("git add -A && git commit -q -m bench", shell=True, cwd=work,
                               capture_output=True, text=True)
            if r.returncode and not allow_empty_fail:
                raise RuntimeError(r.stderr or r.stdout)

        t0 = time.perf_counter()
        write(list(range(a.keys)))
        commit()
        first = time.perf_counter() - t0
        same, changed = [], []
        for n in range(rounds):
            same.append(timed(lambda: commit(True)))
            idx = [((n + 1) * 37 + j) % a.keys for j in range(a.changed)]
            for i in idx:
                revs[keys[i]] += 1

            def rewrite(idx: list[int] = idx) -> None:
                write(idx)
                commit()
            changed.append(timed(rewrite))
        rows.append(("git add -A && git commit (files written)", first, statistics.median(same),
                     statistics.median(changed)))

        fsck = subprocess.run(["git", "--git-dir", str(repo), "fsck", "--strict"], capture_output=True, text=True)
        print(f"\nsettlement of {a.keys} typed keys (YAML files), re-settles: median of {rounds}; "
              f"git fsck of the settled repository: {'ok' if fsck.returncode == 0 else fsck.stderr}")
        print(f"| {'':42} | first settle | unchanged | {a.changed} changed |")
        print(f"| {'-' * 42} | ---: | ---: | ---: |")
        for name, f, s, c in rows:
            print(f"| {name:42} | {f:.2f} s | {s:.3f} s | {c:.3f} s |")
        print("| target (issue 11)                          | < 10 s | < 1 s | < 2 s |")
        size = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
        print(f"\nsettled repository: {size / 1e6:.1f} MB; commits: "
              f"{len(git('--git-dir', str(repo), 'rev-list', 'main').split())}")
        print(json.dumps({"keys": a.keys, "rows": rows}), file=sys.stderr)
    finally:
        srv.stop()
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
