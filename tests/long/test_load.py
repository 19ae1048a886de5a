"""Load: 8 writers and 8 readers on two mounts of one server (4 + 4 per mount), for
HVFS_LOAD_SECONDS (default 600), with real syscalls from threads.

* A writer owns KEYS_PER_WRITER keys of its own (writers share no key, so no
  compare-and-swap is ever lost: any ESTALE is an error here, and the
  "conflicts" column counts them apart so that it shows) and writes them in
  turn: ``open(O_WRONLY|O_TRUNC)``, ``write``, ``close``.
* A reader reads random keys of all writers (most written through the other
  mount, so through its watch): ``open(O_RDONLY)``, ``read``, ``close``. Every
  value names its writer, key and sequence number and carries a checksum: a
  reader checks that it is whole and that a key's sequence never goes back
  (``open()`` is fresh; docs/consistency.md).

At the end: every key in NATS (and on both mounts) holds the last value its
writer's ``close()`` acknowledged; no errors; each mount's RSS, descriptors and
threads did not grow (bounds below, with why).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from ..helpers import wait_for
from .common import ErrorWatch, Footprint, Rig, errno_name, footprint, long_only, table

pytestmark = long_only

SECONDS = int(os.environ.get("HVFS_LOAD_SECONDS", "600"))
WRITERS_PER_MOUNT = 4
READERS_PER_MOUNT = 4
KEYS_PER_WRITER = 16
SIZES = (64, 512, 1024, 4096)

#: RSS is sampled at every tenth of the run. It moves up and down by ~10 MiB from one
#: sample to the next (measured: 54-66 MiB; CPython's allocator and the bytes of the
#: operations in flight), so the bounds look at the peak and at the floor:
#:
#: * peak: what a mount keeps grows with the keys (the index: 128 keys here, a few KiB),
#:   not with the number of operations, except for ring buffers that fill once:
#:   .hvfs/events (4 MiB of JSON lines, more as Python objects; full after ~30,000
#:   changes, a minute or two at this load), .hvfs/errors (500 lines), the metrics'
#:   histograms. The highest sample may exceed the start by at most RSS_PEAK_MAX_KIB:
#:   twice the events buffer plus the allocator's swing.
#: * floor: once the buffers are full a leak raises the lowest sample, the swing does
#:   not. The buffers fill with operations, not time (measured: the floor climbs for the
#:   first 40-60 % of a 4- or 10-minute run, then stays), so the lowest sample of the last
#:   third (from 70 %) may exceed the lowest of the middle (40-60 %) by at most
#:   RSS_FLOOR_GROWTH_MAX_KIB; a leak of 50 bytes per operation would raise it by ~7 MiB
#:   over the last 40 % of a 10-minute run (~150,000 operations).
RSS_PEAK_MAX_KIB = 32 * 1024
RSS_FLOOR_GROWTH_MAX_KIB = 8 * 1024
#: descriptors and threads may differ by a few (trio's worker threads come and go)
FDS_SLACK = 8
THREADS_SLACK = 8

#: Finding (issue 14): a reader on the same mount as a writer doing open(O_TRUNC) + write
#: + close read an empty file now and then, though NATS never holds an empty value. Fixed
#: for readers opening while the writer has the file open; the rare race left (a reader
#: opened before the writer's O_TRUNC) is documented in docs/consistency.md and
#: tests/test_fuzz.py::test_reader_beside_a_truncating_writer. Such empty reads of a key
#: written through the reader's own mount are counted in their own column, not as errors.
EMPTY_READS_BESIDE_A_WRITER_KNOWN = True


def value_for(writer: int, key: int, seq: int, size: int) -> bytes:
    head = f"w{writer}-k{key}-s{seq}-".encode()
    body = (head * (size // len(head) + 1))[:max(0, size - 16)]
    return body + hashlib.blake2b(body, digest_size=8).hexdigest().encode()


def parse(value: bytes) -> tuple[int, int, int] | None:
    """(writer, key, seq) of a whole value; None if torn or mixed."""
    if len(value) < 17:
        return None
    body, digest = value[:-16], value[-16:]
    if hashlib.blake2b(body, digest_size=8).hexdigest().encode() != digest:
        return None
    try:
        w, k, s = body.split(b"-")[:3]
        return int(w[1:]), int(k[1:]), int(s[1:])
    except ValueError:
        return None


@dataclass
class Worker:
    kind: str  # write / read
    mount: int
    ident: int  # the writer's number (its keys are w<ident>-k<n>), or the reader's
    ops: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0
    #: reads that found the value empty, of a key written through this reader's mount
    empty_known: int = 0
    first_errors: list[str] = field(default_factory=list)
    #: write: per key, the last sequence number close() acknowledged
    acked: dict[int, int] = field(default_factory=dict)

    def error(self, what: str, detail: str) -> None:
        self.errors[what] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{self.kind} on mount {self.mount}: {detail}")


def writer(w: Worker, d: Path, stop: threading.Event) -> None:
    wid = w.ident
    rnd = random.Random(wid)
    seq = 0
    while not stop.is_set():
        k = seq % KEYS_PER_WRITER
        seq += 1
        data = value_for(wid, k, seq, rnd.choice(SIZES))
        t = time.perf_counter()
        try:
            fd = os.open(d / f"w{wid}-k{k}", os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno == errno.ESTALE:
                w.conflicts += 1
            w.error(errno_name(e.errno or 0), f"w{wid}-k{k}: {e}")
            continue
        w.latencies.append(time.perf_counter() - t)
        w.ops += 1
        w.acked[k] = seq


def reader(w: Worker, d: Path, names: list[str], stop: threading.Event,
           written_here: set[str]) -> None:
    rnd = random.Random(1000 + w.ident)
    seen: dict[str, int] = {}
    while not stop.is_set():
        name = rnd.choice(names)
        t = time.perf_counter()
        try:
            fd = os.open(d / name, os.O_RDONLY)
            try:
                chunks = []
                while chunk := os.read(fd, 65536):
                    chunks.append(chunk)
            finally:
                os.close(fd)
        except OSError as e:
            w.error(errno_name(e.errno or 0), f"{name}: {e}")
            continue
        w.latencies.append(time.perf_counter() - t)
        w.ops += 1
        value = b"".join(chunks)
        if not value and name in written_here and EMPTY_READS_BESIDE_A_WRITER_KNOWN:
            w.empty_known += 1
            continue
        got = parse(value)
        if got is None or f"w{got[0]}-k{got[1]}" != name:
            w.error("torn or wrong value", f"{name}: {value[:60]!r}... ({len(value)} bytes)")
            continue
        if got[2] < seen.get(name, 0):
            w.error("went back", f"{name}: seq {got[2]} after {seen[name]}")
        seen[name] = got[2]


def count_is(d: Path, n: int) -> bool:
    return len(os.listdir(d)) == n


def holds(p: Path, value: bytes | None) -> bool:
    return p.read_bytes() == value


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


@pytest.mark.timeout(SECONDS + 600)
def test_load(rig2: Rig) -> None:
    bucket = rig2.bucket("load", history=1)
    writers_total = WRITERS_PER_MOUNT * len(rig2.mounts)
    names = [f"w{w}-k{k}" for w in range(writers_total) for k in range(KEYS_PER_WRITER)]
    for wid in range(writers_total):
        for k in range(KEYS_PER_WRITER):
            rig2.raw.put(bucket, f"w{wid}-k{k}", value_for(wid, k, 0, 64))
    dirs = [m.path("kv", bucket) for m in rig2.mounts]
    for d in dirs:
        wait_for(partial(count_is, d, len(names)), 30, f"{len(names)} keys in {d}")
    pids = [m.proc.pid for m in rig2.mounts if m.proc is not None]
    start = [footprint(p) for p in pids]

    stop = threading.Event()
    workers: list[Worker] = []
    threads: list[threading.Thread] = []
    for mi, d in enumerate(dirs):
        for j in range(WRITERS_PER_MOUNT):
            wk = Worker("write", mi, mi * WRITERS_PER_MOUNT + j)
            workers.append(wk)
            threads.append(threading.Thread(target=writer, args=(wk, d, stop), daemon=True))
        for j in range(READERS_PER_MOUNT):
            wk = Worker("read", mi, mi * READERS_PER_MOUNT + j)
            workers.append(wk)
            here = {f"w{mi * WRITERS_PER_MOUNT + j}-k{k}" for j in range(WRITERS_PER_MOUNT)
                    for k in range(KEYS_PER_WRITER)}
            threads.append(threading.Thread(target=reader, args=(wk, d, names, stop, here), daemon=True))
    watches = [ErrorWatch(m) for m in rig2.mounts]
    for ew in watches:
        ew.__enter__()
    t0 = time.monotonic()
    #: each mount's footprint at every tenth of the run (index 0: before the load)
    samples: list[list[Footprint]] = [[f] for f in start]
    try:
        for t in threads:
            t.start()
        for tenth in range(1, 11):
            stop.wait(max(0.0, t0 + SECONDS * tenth / 10 - time.monotonic()))
            if tenth < 10:
                for i, p in enumerate(pids):
                    samples[i].append(footprint(p))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        for ew in watches:
            ew.__exit__(None, None, None)
    seconds = time.monotonic() - t0
    end = [footprint(p) for p in pids]
    for i, f in enumerate(end):
        samples[i].append(f)
    stuck = [t.name for t in threads if t.is_alive()]

    # No acknowledged write lost: NATS, then each mount, holds each key's last acked value.
    lost = []
    for wk in (w for w in workers if w.kind == "write"):
        for k, seq in wk.acked.items():
            name = f"w{wk.ident}-k{k}"
            v = rig2.raw.value(bucket, name)
            got = parse(v or b"")
            if got is None or got[2] != seq:
                lost.append(f"{name}: NATS has {got}, last acked seq {seq}")
            for d in dirs:
                try:
                    wait_for(partial(holds, d / name, v), 10, f"{name} in {d}")
                except AssertionError as e:
                    lost.append(str(e))

    rows = []
    for kind in ("write", "read"):
        ws = [w for w in workers if w.kind == kind]
        lat = [x for w in ws for x in w.latencies]
        n = sum(w.ops for w in ws)
        errs = sum(sum(w.errors.values()) for w in ws)
        rows.append([f"{kind} ({len(ws)} threads)", n, n / seconds, pct(lat, 0.5), pct(lat, 0.99),
                     max(lat, default=float("nan")) * 1000,
                     statistics.fmean(lat) * 1000 if lat else float("nan"),
                     errs - sum(w.conflicts for w in ws), sum(w.conflicts for w in ws),
                     sum(w.empty_known for w in ws) if kind == "read" else "-"])
    errors = Counter[str]()
    first: list[str] = []
    for w in workers:
        errors.update(w.errors)
        first += w.first_errors
    notes = [f"{seconds:.0f} s; {writers_total} writers and {READERS_PER_MOUNT * len(dirs)} readers, "
             f"{WRITERS_PER_MOUNT}+{READERS_PER_MOUNT} per mount; {len(names)} keys, "
             f"{KEYS_PER_WRITER} per writer (no key shared: conflicts are ESTALE, counted apart, "
             f"and must be 0 too); values {'/'.join(map(str, SIZES))} bytes",
             "write = open(O_TRUNC)+write+close (one CAS publish); read = open+read+close "
             "(a fresh get); latencies in ms",
             "empty (documented race): reads of 0 bytes of a key written through the reader's own mount "
             "(docs/consistency.md; test_fuzz.py::test_reader_beside_a_truncating_writer)"]
    if errors:
        notes += ["errors: " + ", ".join(f"{k} x{n}" for k, n in errors.most_common())]
        notes += [f"    {e}" for e in first[:10]]
    for i, ew in enumerate(watches):
        s = ew.summary()
        if s:
            notes += [f"mount {i} .hvfs/errors:"] + [f"    {x}" for x in s[:8]]
    notes += [f"LOST: {x}" for x in lost[:10]]
    table(f"Load: {writers_total} writers + {READERS_PER_MOUNT * len(dirs)} readers on two mounts",
          ["", "ops", "ops/s", "p50 ms", "p99 ms", "max ms", "mean ms", "errors", "conflicts",
           "empty (race)"], rows, notes)
    mib = [[f.rss_kib / 1024 for f in fs] for fs in samples]
    table("Load: each mount's footprint",
          ["mount", "RSS start MiB", "RSS end MiB", "RSS peak MiB", "floor 40-60% MiB",
           "floor 70-100% MiB", "fds start", "fds end", "threads start", "threads end"],
          [[i, m[0], m[-1], max(m), min(m[4:7]), min(m[7:]), fs[0].fds, fs[-1].fds,
            fs[0].threads, fs[-1].threads] for i, (m, fs) in enumerate(zip(mib, samples, strict=True))],
          [f"RSS of mount {i} at each tenth of the run (MiB): " + " ".join(f"{x:.1f}" for x in m)
           for i, m in enumerate(mib)]
          + [f"bounds: peak < start + {RSS_PEAK_MAX_KIB // 1024} MiB; floor of 70-100% < floor "
             f"of 40-60% + {RSS_FLOOR_GROWTH_MAX_KIB // 1024} MiB; fds within +{FDS_SLACK}, "
             f"threads within +{THREADS_SLACK} of the start"])

    assert not stuck, f"workers did not stop: {stuck}"
    assert not rig2.alive(), rig2.alive()
    assert not errors, f"errors: {dict(errors)}; first: {first[:5]}"
    assert not lost, lost[:10]
    for i, fs in enumerate(samples):
        rss = [f.rss_kib for f in fs]
        assert max(rss) - rss[0] < RSS_PEAK_MAX_KIB, f"mount {i}: RSS (KiB) at each tenth: {rss}"
        assert min(rss[7:]) - min(rss[4:7]) < RSS_FLOOR_GROWTH_MAX_KIB, \
            f"mount {i}: the lowest RSS rose over the run (KiB at each tenth: {rss})"
        assert fs[-1].fds <= fs[0].fds + FDS_SLACK, f"mount {i}: descriptors {fs[0]} -> {fs[-1]}"
        assert fs[-1].threads <= fs[0].threads + THREADS_SLACK, f"mount {i}: threads {fs[0]} -> {fs[-1]}"

# a check of the value format itself (cheap; runs with the long tests)
def test_value_format() -> None:
    v = value_for(3, 7, 42, 1024)
    assert len(v) == 1024 and parse(v) == (3, 7, 42)
    assert parse(v[:-1] + b"x") is None
    assert parse(value_for(1, 2, 3, 64)) == (1, 2, 3)
